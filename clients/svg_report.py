"""A picture of a batch of svg items for a person: target, render and difference per item,
with its reward (`assay score --report batch.html` or `--report sheet.png`).

The CLI asks the verifier for the images (`return_images`) on svg items while it scores, keeps
them here, and leaves them out of the JSONL unless the item asked for them itself. The HTML page
needs nothing beyond the standard library; the PNG sheet needs Pillow (`assay[svg]`).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from assay.clients.schema import ScoreItem, ScoreResult

_KINDS = ("reference", "render", "diff")


@dataclass(slots=True)
class _Row:
    index: int
    ident: str
    status: str
    reward: float | None
    feedback: str
    images: dict[str, str] = field(default_factory=dict)


class SvgReport:
    """Collects svg items' results and writes them as an HTML page or a PNG contact sheet."""

    def __init__(self, path: Path) -> None:
        if path.suffix.lower() not in (".html", ".htm", ".png"):
            raise ValueError(f"--report {path}: give a .html or a .png file")
        self.path = path
        self.rows: list[_Row] = []
        self._asked: set[int] = set()

    def prepare(self, index: int, item: ScoreItem) -> ScoreItem:
        """The item, asking for images when it is an svg item that did not already."""
        if item.verifier != "svg" or item.spec.get("return_images"):
            return item
        self._asked.add(index)
        return item.model_copy(update={"spec": {**item.spec, "return_images": True}})

    def take(self, index: int, item: ScoreItem, result: ScoreResult) -> ScoreResult:
        """Keep the result's images; the result as the item asked for it."""
        if item.verifier != "svg":
            return result
        images = result.details.get("images") or {}
        ident = str(result.id) if result.id is not None else f"#{index + 1}"
        self.rows.append(
            _Row(index, ident, result.status, result.reward, result.feedback, dict(images))
        )
        if index in self._asked and "images" in result.details:
            details = {k: v for k, v in result.details.items() if k != "images"}
            return result.model_copy(update={"details": details})
        return result

    def write(self) -> None:
        self.rows.sort(key=lambda row: row.index)  # the input's order, not the finishing one
        if self.path.suffix.lower() == ".png":
            self.path.write_bytes(self.sheet())
        else:
            self.path.write_text(self.page(), encoding="utf-8")

    def page(self) -> str:
        cells = []
        for row in self.rows:
            pictures = "".join(
                f'<td><img alt="{kind}" src="data:image/png;base64,{row.images[kind]}"></td>'
                if kind in row.images
                else "<td class=none>—</td>"
                for kind in _KINDS
            )
            reward = "—" if row.reward is None else f"{row.reward:.3f}"
            cells.append(
                f"<tr class={html.escape(row.status)}><th>{html.escape(row.ident)}</th>"
                f"{pictures}<td><b>{reward}</b><br>{html.escape(row.status)}<br>"
                f"<small>{html.escape(row.feedback[:300])}</small></td></tr>"
            )
        return (
            "<!doctype html><meta charset=utf-8><title>assay: svg items</title><style>"
            "body{font:14px sans-serif;margin:1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px;vertical-align:middle;max-width:22em}"
            "img{width:160px;height:160px;image-rendering:pixelated;display:block}"
            ".passed{background:#eaffea}.none{text-align:center;color:#999}</style>"
            f"<h1>{len(self.rows)} svg items</h1><table><tr><th>item</th><th>target</th>"
            "<th>render</th><th>difference</th><th>reward</th></tr>" + "".join(cells) + "</table>"
        )

    def sheet(self, tile: int = 128) -> bytes:
        from PIL import Image, ImageDraw

        label = 260
        width, height = 3 * (tile + 8) + label, max(1, len(self.rows)) * (tile + 8) + 8
        sheet = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(sheet)
        for i, row in enumerate(self.rows):
            top = 8 + i * (tile + 8)
            for j, kind in enumerate(_KINDS):
                left = 8 + j * (tile + 8)
                draw.rectangle((left - 1, top - 1, left + tile, top + tile), outline="#bbbbbb")
                if kind in row.images:
                    with Image.open(io.BytesIO(base64.b64decode(row.images[kind]))) as image:
                        picture = image.convert("RGB").resize((tile, tile))
                    sheet.paste(picture, (left, top))
            reward = "-" if row.reward is None else f"{row.reward:.3f}"
            text = f"{row.ident}\nreward {reward}\n{row.status}\n{row.feedback[:40]}"
            draw.multiline_text((8 + 3 * (tile + 8), top + 4), text, fill="black")
        out = io.BytesIO()
        sheet.save(out, format="PNG")
        return out.getvalue()


__all__ = ["SvgReport"]

"""The svg verifier on real icons, real cairosvg workers in the real bubblewrap sandbox."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import torch
from PIL import Image
from pydantic import ValidationError

from assay.clients.schema import SvgSpec
from assay.sandboxes import LocalSandbox
from assay.verifiers import Status
from assay.verifiers import svg_metrics as metrics
from assay.verifiers.svg import SvgVerifier, length_term
from tests.conftest import needs_bwrap, start_server, stop_server

pytestmark = needs_bwrap
shared_loop = pytest.mark.asyncio(loop_scope="module")  # the module's warm workers

ICONS = {p.stem: p.read_text() for p in (Path(__file__).parent / "data" / "svg").glob("*.svg")}
NS = 'xmlns="http://www.w3.org/2000/svg"'
BLANK = f'<svg {NS} viewBox="0 0 24 24"/>'


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box() -> AsyncIterator[LocalSandbox]:
    sandbox = LocalSandbox()
    yield sandbox
    await sandbox.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svg() -> AsyncIterator[SvgVerifier]:
    verifier = SvgVerifier(workers=2)
    yield verifier
    await verifier.close()


def shifted(text: str, dx: float, dy: float) -> str:
    start = text.index(">", text.index("<svg")) + 1
    end = text.rindex("</svg>")
    return f'{text[:start]}<g transform="translate({dx} {dy})">{text[start:end]}</g>{text[end:]}'


def recoloured(text: str) -> str:
    return re.sub(r"#(?!ffffff)[0-9a-f]{6}", "#16a34a", text)


# One part of each icon taken away (a path, the handle, the flap, the hub, the door).
MISSING = {
    "home": ('<path d="M3 10.5 12 3l9 7.5"/>', ""),
    "search": ('<line x1="15.5" y1="15.5" x2="21" y2="21"/>', ""),
    "mail": ('<path d="M3.5 7l8.5 6 8.5-6"', '<path d="M3.5 7"'),
    "settings": ('<circle cx="12" cy="12" r="3" fill="#ffffff"/>', ""),
    "heart": ("c.7-1.4 2.2-2.6 4.3-2.6 3.7 0 5.8 3.7 4.3 7.2C19.5 16.4 12 21 12 21z", "z"),
    "star": ("16.5,13.8 18,20.4 12,17 6,20.4 7.5,13.8", "12,17"),
}


async def score(svg: SvgVerifier, box: LocalSandbox, payload: str, **spec: object) -> float:
    verdict = await svg.verify(payload, SvgSpec.model_validate(spec), box)
    assert verdict.reward is not None, verdict
    return verdict.reward


def test_the_test_icons_are_there() -> None:
    assert set(ICONS) == set(MISSING)
    for name, (part, _replacement) in MISSING.items():
        assert part in ICONS[name]


@pytest.mark.parametrize("name", sorted(MISSING))
@shared_loop
async def test_an_icon_against_itself_and_worse_copies(
    svg: SvgVerifier, box: LocalSandbox, name: str
) -> None:
    icon = ICONS[name]
    same = await svg.verify(icon, SvgSpec(reference_svg=icon), box)
    assert same.status == Status.PASSED
    assert same.reward is not None
    assert same.reward >= 0.99
    assert {"pixel", "ssim", "edge", "ssim_raw", "similarity", "length"} <= set(same.details)

    part, replacement = MISSING[name]
    rewards = {
        variant: await score(svg, box, text, reference_svg=icon)
        for variant, text in {
            "shift_small": shifted(icon, 0.4, 0),
            "shift_large": shifted(icon, 2, 1),
            "recoloured": recoloured(icon),
            "part_missing": icon.replace(part, replacement),
            "blank": BLANK,
        }.items()
    }
    # Visibly less than the identical icon, more the further it is moved, nothing for blank.
    for variant in ("shift_small", "shift_large", "recoloured", "part_missing"):
        assert rewards[variant] <= same.reward - 0.05, (variant, rewards)
    assert rewards["shift_small"] > rewards["shift_large"] >= rewards["blank"], rewards
    assert rewards["blank"] == 0.0
    assert rewards["recoloured"] > 0.2, rewards
    assert rewards["part_missing"] > 0.0, rewards


@shared_loop
async def test_empty_plain_and_near_empty_answers_do_not_pay(
    svg: SvgVerifier, box: LocalSandbox
) -> None:
    icon = ICONS["home"]
    plain = await svg.verify(
        f'<svg {NS} viewBox="0 0 24 24"><rect width="24" height="24" fill="#1f2937"/></svg>',
        SvgSpec(reference_svg=icon),
        box,
    )
    assert (plain.status, plain.reward) == (Status.FAILED, 0.0)
    assert "plain colour" in plain.feedback
    for payload in (BLANK, f'<svg {NS} viewBox="0 0 24 24"><circle cx="12" cy="12" r="1"/></svg>'):
        assert await score(svg, box, payload, reference_svg=icon) <= 0.02
    # A plain target is matched by a plain answer of its colour, not of another.
    red = f'<svg {NS} viewBox="0 0 2 2"><rect width="2" height="2" fill="#ff0000"/></svg>'
    blue = red.replace("#ff0000", "#0000ff")
    assert await score(svg, box, red, reference_svg=red) >= 0.99
    assert await score(svg, box, blue, reference_svg=red) < 0.5


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("<svg><g>", "not well-formed XML"),
        ("just some words", "not well-formed XML"),
        ('<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>', "<html>, not <svg>"),
        ('<svg xmlns="urn:other"/>', "namespace"),
        (f'<svg {NS}><path d="M 0 0 L"/></svg>' * 2, "not well-formed XML"),
    ],
)
@shared_loop
async def test_what_is_not_one_svg_document_is_a_format_error(
    svg: SvgVerifier, box: LocalSandbox, payload: str, words: str
) -> None:
    verdict = await svg.verify(payload, SvgSpec(reference_svg=ICONS["star"]), box)
    assert (verdict.status, verdict.reward) == (Status.FORMAT_ERROR, 0.0)
    assert words in verdict.feedback


def _png(text: str, size: int = 256) -> bytes:
    import cairosvg  # the test's own rendering of a trusted icon

    data: bytes = cairosvg.svg2png(
        bytestring=text.encode(), output_width=size, output_height=size, background_color="white"
    )
    return data


def _bomb_png() -> bytes:
    """A 100-byte PNG declaring 60000 x 60000 pixels (Pillow's decompression-bomb case)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 60000, 60000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


TARGET_PNG = base64.b64encode(_png(ICONS["heart"])).decode()


def _forbidden_cases() -> list[tuple[str, str]]:
    billion_laughs = (
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        f"]><svg {NS}><desc>&c;</desc></svg>"
    )
    external_entity = (
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f"<svg {NS}><desc>&x;</desc></svg>"
    )
    gzip_bomb = base64.b64encode(gzip.compress(b"<svg/>" + b" " * 5_000_000)).decode()
    shapes = '<circle cx="12" cy="12" r="6"/>'
    return [
        # The target itself, embedded as a raster: the cheapest cheat there is.
        (f'<svg {NS}><image href="data:image/png;base64,{TARGET_PNG}"/></svg>', "<image>"),
        (f'<svg {NS}><image href="file:///etc/passwd"/></svg>', "<image>"),
        (f'<svg {NS}><use href="http://example.com/a.svg#x"/></svg>', "outside the document"),
        (f'<svg {NS}><use href="data:image/svg+xml;base64,{gzip_bomb}"/></svg>', "outside"),
        (f'<svg {NS}><rect width="9" height="9" fill="url(/etc/x#p)"/></svg>', "outside"),
        (
            f'<svg {NS}><rect width="9" height="9" style="fill: url(\'https://e.x/\')"/></svg>',
            "outside",
        ),
        (f"<svg {NS}><style>@import url(https://e.x/a.css);</style>{shapes}</svg>", "@import"),
        (f"<svg {NS}><style>rect {{ fill: url(http://e.x/p) }}</style>{shapes}</svg>", "outside"),
        (
            '<?xml-stylesheet href="https://e.x/a.css"?>' + f"<svg {NS}>{shapes}</svg>",
            "style sheet",
        ),
        (f"<svg {NS}><foreignObject><div>hi</div></foreignObject></svg>", "foreignObject"),
        (f"<svg {NS}><script>alert(1)</script>{shapes}</svg>", "<script>"),
        (f'<svg {NS} onload="alert(1)">{shapes}</svg>', "event handler"),
        (
            f'<svg {NS}>{shapes[:-2]}><animate attributeName="r" to="0" dur="1s"/></circle></svg>',
            "animation",
        ),
        (f'<svg {NS}><set attributeName="fill" to="red"/>{shapes}</svg>', "animation"),
        (f"<svg {NS}><text x='2' y='20'>A</text></svg>", "text"),
        (billion_laughs, "entity declarations"),
        (external_entity, "entity declarations"),
    ]


@pytest.mark.parametrize(("payload", "words"), _forbidden_cases())
@shared_loop
async def test_what_is_not_vector_drawing_is_forbidden(
    svg: SvgVerifier, box: LocalSandbox, payload: str, words: str
) -> None:
    verdict = await svg.verify(payload, SvgSpec(reference_png=TARGET_PNG), box)
    assert (verdict.status, verdict.reward) == (Status.FORBIDDEN, 0.0), verdict
    assert words in verdict.feedback


@shared_loop
async def test_text_renders_when_the_spec_allows_it(svg: SvgVerifier, box: LocalSandbox) -> None:
    text = f'<svg {NS} viewBox="0 0 24 24"><text x="2" y="20" font-size="20">A</text></svg>'
    verdict = await svg.verify(text, SvgSpec(reference_svg=text, allow_text=True), box)
    assert verdict.status in (Status.PASSED, Status.FAILED)  # fonts vary; it is judged


@shared_loop
async def test_a_png_reference_and_the_images_for_a_person(
    svg: SvgVerifier, box: LocalSandbox
) -> None:
    verdict = await svg.verify(
        ICONS["heart"], SvgSpec(reference_png=TARGET_PNG, return_images=True), box
    )
    assert verdict.status == Status.PASSED
    images = verdict.details["images"]
    for key in ("render", "reference", "diff"):
        with Image.open(io.BytesIO(base64.b64decode(images[key]))) as image:
            assert image.size == (256, 256)
    # A PNG of another size is fitted in: the same picture at 64 px scores well, not exactly.
    small = base64.b64encode(_png(ICONS["heart"], 64)).decode()
    assert 0.7 <= await score(svg, box, ICONS["heart"], reference_png=small) < 0.99


@pytest.mark.parametrize(
    ("reference", "words"),
    [
        ({"reference_svg": "<svg"}, "reference_svg: not well-formed"),
        ({"reference_svg": f'<svg {NS}><image href="a.png"/></svg>'}, "<image>"),
        ({"reference_png": base64.b64encode(b"not a png").decode()}, "does not decode"),
        ({"reference_png": base64.b64encode(_bomb_png()).decode()}, "does not decode"),
    ],
)
@shared_loop
async def test_a_bad_reference_is_the_spec_s_fault(
    svg: SvgVerifier, box: LocalSandbox, reference: dict[str, str], words: str
) -> None:
    verdict = await svg.verify(ICONS["star"], SvgSpec.model_validate(reference), box)
    assert verdict.status == Status.INVALID_SPEC
    assert verdict.reward is None
    assert words in verdict.feedback


def test_the_spec_wants_one_reference_and_sane_weights() -> None:
    for bad in (
        {},
        {"reference_svg": BLANK, "reference_png": TARGET_PNG},
        {"reference_svg": BLANK, "weights": {"pixel": 0}},
        {"reference_svg": BLANK, "weights": {"lpips": 1}},
        {"reference_png": "***"},
        {"reference_svg": BLANK, "size": 100000},
    ):
        with pytest.raises(ValidationError):
            SvgSpec.model_validate(bad)


@shared_loop
async def test_weights_and_the_length_penalty(svg: SvgVerifier, box: LocalSandbox) -> None:
    icon = ICONS["search"]
    moved = shifted(icon, 0.4, 0)
    plain = await score(svg, box, moved, reference_svg=icon)
    edge_only = await score(svg, box, moved, reference_svg=icon, weights={"edge": 1})
    assert edge_only < plain  # edges are the harshest on a shift
    padded = icon.replace("<circle", "<!--" + "x" * 2 * len(icon) + "--><circle")
    assert await score(svg, box, padded, reference_svg=icon) >= 0.99
    penalised = await svg.verify(padded, SvgSpec(reference_svg=icon, length_penalty=0.5), box)
    assert penalised.reward == pytest.approx(1.0 - 0.5, abs=0.01)
    assert penalised.details["length"]["penalty"] == 1.0
    assert length_term(100, 100) == 0.25
    assert length_term(50, 100) == 0.0


def test_the_metrics_on_known_images() -> None:
    torch.manual_seed(0)
    a = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    white = torch.full((32, 32, 3), 255, dtype=torch.uint8)
    same = metrics.compare(list(a), list(a), torch.device("cpu"))
    assert all(s["pixel"] > 0.999 and s["ssim"] > 0.999 and s["edge"] > 0.999 for s in same)
    inverse = metrics.compare([255 - a[0]], [a[0]], torch.device("cpu"))[0]
    assert inverse["pixel"] == 0.0
    assert inverse["edge"] > 0.99  # edges do not see which side is the dark one
    blank = metrics.compare([white], [a[0]], torch.device("cpu"))[0]
    assert blank["pixel"] == 0.0
    assert blank["ssim"] == 0.0
    assert blank["flat"] == 1.0
    for scores in (*same, inverse, blank):
        assert all(0.0 <= scores[k] <= 1.0 for k in metrics.METRICS)


@shared_loop
async def test_attacks_cost_one_worker_and_the_next_item_renders(
    svg: SvgVerifier, box: LocalSandbox
) -> None:
    spec = SvgSpec(reference_svg=ICONS["star"], time_limit_s=3)
    for payload, status in ATTACKS.values():
        verdict = await svg.verify(payload, spec, box)
        assert (verdict.status, verdict.reward) == (status, 0.0), verdict
        after = await svg.verify(ICONS["star"], spec, box)
        assert after.status == Status.PASSED
    assert svg._pool is not None
    assert svg._pool.stats.discarded >= 2


def _use_bomb(levels: int = 9, fan: int = 10) -> str:
    """Nested <use> fan-out, 10**9 rectangles from 1.8 KB (CVE-2026-31899's shape)."""
    parts = ['<g id="l0"><rect width="2" height="2"/></g>']
    for i in range(1, levels + 1):
        uses = "".join(f'<use href="#l{i - 1}"/>' for _ in range(fan))
        parts.append(f'<g id="l{i}">{uses}</g>')
    return (
        f'<svg {NS} viewBox="0 0 24 24"><defs>{"".join(parts)}</defs><use href="#l{levels}"/></svg>'
    )


ATTACKS = {
    "use_bomb": (_use_bomb(), Status.TIMEOUT),
    "use_cycle": (
        f'<svg {NS}><g id="a"><use href="#b"/></g><g id="b"><use href="#a"/></g>'
        '<use href="#a"/></svg>',
        Status.FORMAT_ERROR,
    ),
    "deep_nesting": (f"<svg {NS}>{'<g>' * 50000}{'</g>' * 50000}</svg>", Status.FORMAT_ERROR),
    # cairosvg paints a pattern tile on a surface of its size: 20000 px square is 1.6 GB.
    "huge_pattern": (
        f'<svg {NS} viewBox="0 0 24 24"><pattern id="p" width="20000" height="20000" '
        'patternUnits="userSpaceOnUse"><rect width="5" height="5"/></pattern>'
        '<rect width="24" height="24" fill="url(#p)"/></svg>',
        Status.MEMORY_LIMIT,
    ),
}


@shared_loop
async def test_a_huge_declared_canvas_renders_at_the_requested_size(
    svg: SvgVerifier, box: LocalSandbox
) -> None:
    huge = ICONS["star"].replace(
        'viewBox="0 0 24 24"', 'viewBox="0 0 24 24" width="1e9" height="1e9"'
    )
    blur = ICONS["star"].replace(
        "<polygon",
        '<filter id="f"><feGaussianBlur stdDeviation="1e9"/></filter><polygon filter="url(#f)"',
    )
    for payload in (huge, blur):
        verdict = await svg.verify(payload, SvgSpec(reference_svg=ICONS["star"], size=64), box)
        assert verdict.status in (Status.PASSED, Status.FAILED), verdict
        assert verdict.details["size"] == 64


def test_a_server_keeps_serving_through_the_attacks() -> None:
    server = start_server(svg_workers="2")
    try:
        spec = {"reference_svg": ICONS["home"], "time_limit_s": 3}
        items = [
            {"id": name, "verifier": "svg", "completion": payload, "spec": spec, "extract": "raw"}
            for name, (payload, _) in ATTACKS.items()
        ]
        items.append(
            {
                "id": "good",
                "verifier": "svg",
                "spec": spec,
                "completion": f"```svg\n{ICONS['home']}\n```",
            }
        )
        with httpx.Client(base_url=server.url, timeout=120) as client:
            results = client.post("/v1/score", json={"items": items}).json()["results"]
            statuses = {r["id"]: r["status"] for r in results}
            assert statuses == {
                **{name: status.value for name, (_, status) in ATTACKS.items()},
                "good": "passed",
            }
            assert client.get("/healthz").status_code == 200
            moved = {**items[-1], "completion": shifted(ICONS["home"], 0.4, 0)}
            again = client.post("/v1/score", json={"items": [moved]}).json()["results"]
            assert again[0]["status"] == "failed"
            assert 0 < again[0]["reward"] < 1
            facts = {v["name"]: v for v in client.get("/v1/verifiers").json()["verifiers"]}
            assert facts["svg"]["available"] is True
            assert facts["svg"]["facts"]["pool"]["discarded"] >= 2
    finally:
        stop_server(server)


def test_assay_score_writes_a_page_and_a_sheet_for_a_person(tmp_path: Path) -> None:
    star = ICONS["star"]
    rows = [
        {"id": "same", "verifier": "svg", "completion": star, "spec": {"reference_svg": star}},
        {
            "id": "moved",
            "verifier": "svg",
            "completion": shifted(star, 1, 0),
            "spec": {"reference_svg": star},
        },
        {"id": "broken", "verifier": "svg", "completion": "<svg", "spec": {"reference_svg": star}},
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for report in ("batch.html", "sheet.png"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "assay.clients.cli",
                "score",
                str(source),
                "-q",
                "-o",
                str(tmp_path / "out.jsonl"),
                "--report",
                str(tmp_path / report),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [r["status"] for r in results] == ["passed", "failed", "format_error"]
        assert all("images" not in r["details"] for r in results)  # the items did not ask
    page = (tmp_path / "batch.html").read_text()
    assert page.count("<tr class=") == 3
    assert page.count("data:image/png;base64,") == 6  # target, render, diff of two items
    assert page.index(">same<") < page.index(">moved<") < page.index(">broken<")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.height == 3 * (128 + 8) + 8


@shared_loop
async def test_an_editor_s_export_with_a_doctype_and_xlink_renders(
    svg: SvgVerifier, box: LocalSandbox
) -> None:
    head, body = ICONS["settings"].split(">", 1)
    hub = '<circle cx="12" cy="12" r="3" fill="#ffffff"/>'
    assert hub in body
    exported = (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n<!-- Generator: an editor -->\n'
        + head
        + ' xmlns:xlink="http://www.w3.org/1999/xlink">'
        + body.replace(hub, '<use xlink:href="#hub"/>').replace(
            "</defs>", hub.replace("<circle", '<circle id="hub"') + "</defs>"
        )
    )
    verdict = await svg.verify(exported, SvgSpec(reference_svg=ICONS["settings"]), box)
    assert verdict.status == Status.PASSED, verdict

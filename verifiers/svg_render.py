"""The svg verifier's renderer: runs INSIDE the sandbox as a warm worker, never in the service.

Started as `python3 -s svg_render.py` (Debian's interpreter, cairosvg and its dependencies
imported from the venv's site-packages, bound read-only and named by PYTHONPATH). It imports
nothing of assay. Each request is one JSON line followed by `len` bytes:

    {"kind": "svg", "size": 256, "len": 1234, "allow_text": false}   then the SVG text
    {"kind": "png", "size": 256, "len": 5678}                       then the PNG bytes

and each answer one JSON line, followed by `len` bytes of pixels when `ok`:

    {"ok": true, "len": 262144, "ms": 3.1}   then size*size*4 bytes, cairo's ARGB32 (B, G, R, A
                                              in memory), composited on white
    {"ok": false, "status": "format_error" | "forbidden", "reason": "..."}

Checks before rendering (docs/svg.md says why each): one well-formed XML document whose root is
<svg>, no entity declarations, no reference to anything outside the document, none of the
elements that are not vector shapes (script, foreignObject, image, animation, text unless
allowed). The output size is forced: whatever the document declares, the canvas is size x size.
Time and memory are bounded from outside (the sandbox's limits, the service's per-render
deadline, which kills this process).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from typing import Any, BinaryIO

_SVG_NS = "http://www.w3.org/2000/svg"
# Elements that are not vector drawing (lower-cased local names): scripts and event hooks,
# HTML or rasters inside the SVG, animation (a static render would show its base state, a
# browser something else), inclusion of other documents.
_FORBIDDEN = {
    "script": "a <script>",
    "handler": "a <handler> (script)",
    "listener": "a <listener> (script)",
    "foreignobject": "a <foreignObject> (HTML inside the SVG)",
    "image": "an <image> (an embedded raster or another document)",
    "feimage": "an <feImage> (an embedded raster or another document)",
    "animate": "an <animate> (animation)",
    "animatetransform": "an <animateTransform> (animation)",
    "animatemotion": "an <animateMotion> (animation)",
    "animatecolor": "an <animateColor> (animation)",
    "set": "a <set> (animation)",
    "discard": "a <discard> (animation)",
    "include": "an <include> (another document)",
    "iframe": "an <iframe>",
    "video": "a <video>",
    "audio": "an <audio>",
    "canvas": "a <canvas>",
}
_TEXT = {"text", "tspan", "textpath", "tref", "altglyph", "flowroot", "flowpara"}
_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
_IMPORT = re.compile(r"@import", re.IGNORECASE)
_STYLESHEET_PI = re.compile(rb"<\?xml-stylesheet", re.IGNORECASE)


class Refused(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _check_urls(text: str, where: str) -> None:
    for match in _URL.finditer(text):
        target = match.group(2).strip()
        if not target.startswith("#"):
            raise Refused("forbidden", f"{where} refers to {target[:80]!r} outside the document")


def check(data: bytes, allow_text: bool) -> Any:
    """The parsed document, or `Refused` with the reason."""
    from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
    from defusedxml.ElementTree import ParseError, fromstring  # type: ignore[import-untyped]

    if _STYLESHEET_PI.search(data):
        raise Refused("forbidden", "an <?xml-stylesheet?> refers to a style sheet outside")
    try:
        # defusedxml: no entity declarations (billion laughs), no external entities or DTDs.
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise Refused("forbidden", f"entity declarations are not allowed ({exc})") from None
    except ParseError as exc:
        raise Refused("format_error", f"not well-formed XML: {exc}") from None
    if not isinstance(root.tag, str) or _local(root.tag) != "svg":
        raise Refused("format_error", f"the root element is <{_local(str(root.tag))}>, not <svg>")
    if root.tag.startswith("{") and not root.tag.startswith("{" + _SVG_NS + "}"):
        raise Refused("format_error", f"the root <svg> is in namespace {root.tag[1:-4]!r}")
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        name = _local(element.tag).lower()
        if name in _FORBIDDEN:
            raise Refused("forbidden", f"the SVG contains {_FORBIDDEN[name]}")
        if name in _TEXT and not allow_text:
            raise Refused("forbidden", f"the SVG contains <{_local(element.tag)}> (text)")
        for key, value in element.attrib.items():
            attr = _local(key).lower()
            if attr.startswith("on"):
                raise Refused("forbidden", f"the SVG has an event handler ({attr}=…, a script)")
            if attr == "href" and not value.strip().startswith("#"):
                raise Refused(
                    "forbidden",
                    f"<{_local(element.tag)}> refers to {value.strip()[:80]!r} outside the "
                    "document",
                )
            if "url(" in value.lower():
                _check_urls(value, f"<{_local(element.tag)} {attr}>")
        if name == "style" and element.text:
            if _IMPORT.search(element.text):
                raise Refused("forbidden", "a <style> @import refers to a style sheet outside")
            _check_urls(element.text, "a <style>")
    return root


def render_svg(data: bytes, size: int, allow_text: bool) -> bytes:
    check(data, allow_text)
    from cairosvg.parser import Tree  # type: ignore[import-untyped]
    from cairosvg.surface import PNGSurface  # type: ignore[import-untyped]

    try:
        # cairosvg parses again with defusedxml (entities forbidden) and fetches only data:
        # URLs, which the check above has already refused.
        tree = Tree(bytestring=data)
        surface = PNGSurface(
            tree, None, 96, output_width=size, output_height=size, background_color="white"
        )
    except RecursionError:
        raise Refused("format_error", "it is nested too deeply to render") from None
    except MemoryError:
        raise Refused("memory_limit", "the renderer ran out of memory") from None
    except Exception as exc:
        if "NO_MEMORY" in str(exc):  # cairo could not allocate a surface
            raise Refused("memory_limit", "the renderer ran out of memory") from None
        raise Refused("format_error", f"it does not render: {type(exc).__name__}: {exc}") from None
    cairo = surface.cairo
    cairo.flush()
    if cairo.get_width() != size or cairo.get_height() != size:
        raise Refused("format_error", "it does not render at the requested size")
    stride = cairo.get_stride()
    raw = bytes(cairo.get_data())
    if stride == size * 4:
        return raw
    return b"".join(raw[y * stride : y * stride + size * 4] for y in range(size))


def render_png(data: bytes, size: int) -> bytes:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 64 << 20
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGBA")
    except Exception as exc:
        raise Refused("format_error", f"the reference PNG does not decode: {exc}") from None
    # Fit inside size x size keeping the aspect ratio, centred, on white: what cairosvg does
    # with a viewBox of another shape (preserveAspectRatio's default, xMidYMid meet).
    scale = size / max(image.width, image.height)
    width = max(1, round(image.width * scale))
    height = max(1, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - width) // 2, (size - height) // 2))
    r, g, b, a = canvas.split()
    return Image.merge("RGBA", (b, g, r, a)).tobytes()  # cairo's byte order


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    while True:
        line = requests.readline()
        if not line:
            return
        header = json.loads(line)
        data = requests.read(int(header["len"]))
        size = int(header["size"])
        started = time.perf_counter()
        try:
            if header["kind"] == "png":
                pixels = render_png(data, size)
            else:
                pixels = render_svg(data, size, bool(header.get("allow_text", False)))
        except Refused as exc:
            answer = {"ok": False, "status": exc.status, "reason": exc.reason[:1500]}
            answers.write(json.dumps(answer).encode() + b"\n")
            answers.flush()
            if exc.status == "memory_limit":
                return  # whatever it holds now, a fresh worker takes the next request
            continue
        ms = (time.perf_counter() - started) * 1000
        answers.write(json.dumps({"ok": True, "len": len(pixels), "ms": round(ms, 2)}).encode())
        answers.write(b"\n" + pixels)
        answers.flush()


def main() -> None:
    # The protocol owns stdout; anything a library prints goes to stderr instead.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import cairosvg  # type: ignore[import-untyped]  # noqa: F401 - warm before the first request

    answers.write(b'{"ready": true}\n')
    answers.flush()
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()

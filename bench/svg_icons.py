"""Benchmark: SVG icon items at 256 px, assay against the plain way.

The items: `--items` completions (default 1,000) in GRPO groups of 8 sharing a reference: each
reference is one of the test icons (tests/verifiers/data/svg) in a colour and at an angle of
its own, and each completion is that reference itself, moved, recoloured, scaled, missing a
part, or blank. Default spec: pixel and SSIM, half each, at 256 px.

Both ways run in the same process, one after the other, on the same items:
- assay: a real `assay serve` (bubblewrap sandbox, warm cairosvg workers, default settings) on
  a loopback port, the whole set sent as one batch with the Python client;
- plain: a plain loop, one item after the other, as reward functions in RL repositories do:
  `cairosvg.svg2png` of the completion and of the reference on white at 256 px, decoded with
  Pillow, compared with numpy using the same formulas as the service (RLRF's normalised pixel
  term, per-channel SSIM rescaled against a blank canvas). No sandbox, no limits.

Reported: items/s for both and their ratio, and the items whose rewards differ by more than
0.01 (there should be none). Machines here are noisy: read the ratio, not the absolute figures.

    .venv/bin/python bench/svg_icons.py [--items 1000] [--rounds 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cairosvg  # type: ignore[import-untyped]
import numpy as np
from PIL import Image

from assay.clients import AssayClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from code_sum import Service, rss_mb

ROOT = Path(__file__).resolve().parent.parent
ICONS = sorted((ROOT / "tests" / "verifiers" / "data" / "svg").glob("*.svg"))
SIZE = 256
GROUP = 8
PALETTE = ["#1f2937", "#e11d48", "#2563eb", "#16a34a", "#f59e0b", "#7c3aed", "#0891b2", "#be185d"]


def _inner(text: str) -> tuple[str, str, str]:
    start = text.index(">", text.index("<svg")) + 1
    end = text.rindex("</svg>")
    return text[:start], text[start:end], text[end:]


def _wrap(text: str, transform: str) -> str:
    head, body, tail = _inner(text)
    return f'{head}<g transform="{transform}">{body}</g>{tail}'


def _recolour(text: str, colour: str) -> str:
    return re.sub(r"#(?!ffffff)[0-9a-f]{6}", colour, text)


def make_items(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    icons = [p.read_text() for p in ICONS]
    items: list[dict[str, Any]] = []
    g = 0
    while len(items) < n:
        base = rng.choice(icons)
        reference = _wrap(
            _recolour(base, rng.choice(PALETTE)), f"rotate({rng.randint(-30, 30)} 12 12)"
        )
        head, body, tail = _inner(reference)
        shapes = re.findall(r"<(?:path|line|circle|rect|polygon)[^>]*/>", body)
        completions = [
            reference,
            _wrap(reference, f"translate({rng.uniform(-2, 2):.2f} {rng.uniform(-2, 2):.2f})"),
            _wrap(reference, "translate(0.3 0.3)"),
            _recolour(reference, rng.choice(PALETTE)),
            _wrap(
                reference, f"translate(12 12) scale({rng.uniform(0.7, 1.2):.2f}) translate(-12 -12)"
            ),
            reference.replace(rng.choice(shapes), "", 1) if shapes else reference,
            f"{head}{tail}",  # blank
            _wrap(reference, f"rotate({rng.randint(5, 90)} 12 12)"),
        ]
        for j, completion in enumerate(completions[:GROUP]):
            if len(items) == n:
                break
            items.append(
                {
                    "id": f"s{seed}-g{g}-{j}",
                    "verifier": "svg",
                    "completion": f"```svg\n{completion}\n```",
                    "spec": {"reference_svg": reference, "size": SIZE},
                }
            )
        g += 1
    return items


# -- the plain way ---------------------------------------------------------------------------


def _render(text: str) -> np.ndarray:
    png = cairosvg.svg2png(
        bytestring=text.encode(), output_width=SIZE, output_height=SIZE, background_color="white"
    )
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)


def _band(n: int) -> np.ndarray:
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    band = np.zeros((n - 10, n), dtype=np.float32)
    for i in range(n - 10):
        band[i, i : i + 11] = g
    return band


BAND = _band(SIZE)


def _pixel(a: np.ndarray, b: np.ndarray) -> float:
    def norm(x: np.ndarray) -> np.ndarray:
        std = x.std(axis=(0, 1))
        return np.where(std > 1e-6, (x - x.mean(axis=(0, 1))) / np.maximum(std, 1e-6), 0.0)

    flat = a.std(axis=(0, 1)).max() <= 1e-6 and b.std(axis=(0, 1)).max() <= 1e-6
    if flat:
        return float(np.clip(1 - np.linalg.norm(a - b) / math.sqrt(a.size), 0, 1))
    return float(np.clip(1 - np.linalg.norm(norm(a) - norm(b)) / math.sqrt(a.size), 0, 1))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = 0.01**2, 0.03**2
    scores, blanks = [], []
    for c in range(3):
        x, y = a[..., c], b[..., c]

        def f(z: np.ndarray) -> np.ndarray:
            out: np.ndarray = BAND @ z @ BAND.T
            return out

        mx, my = f(x), f(y)
        vx, vy, cov = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        blank = ((2 * my + c1) * c2) / ((1 + my**2 + c1) * (vy + c2))
        scores.append(s.mean())
        blanks.append(blank.mean())
    score = float(np.clip(np.mean(scores), 0, 1))
    s0 = float(np.clip(np.mean(blanks), 0, 1))
    return float(np.clip((score - s0) / (1 - s0), 0, 1)) if 1 - s0 > 1e-6 else score


def plain_one(item: dict[str, Any]) -> float:
    svg = item["completion"].split("```svg\n", 1)[1].rsplit("\n```", 1)[0]
    try:
        render = _render(svg)
    except Exception:
        return 0.0
    target = _render(item["spec"]["reference_svg"])
    if np.ptp(render, axis=(0, 1)).max() == 0 and np.ptp(target, axis=(0, 1)).max() > 0:
        return 0.0
    return 0.5 * _pixel(render, target) + 0.5 * _ssim(render, target)


def run_plain(items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    rewards = [plain_one(item) for item in items]
    return time.perf_counter() - started, rewards


def run_service(client: AssayClient, items: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = client.score(items)
    return time.perf_counter() - started, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="fresh items each round")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "svg_icons.json")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)

    service = Service(settings)
    try:
        rounds = []
        with AssayClient(service.url, timeout=1200) as client:
            client.score(make_items(GROUP, seed=10_000))  # start the renderers: a warm service
            for r in range(args.rounds):
                items = make_items(args.items, seed=r)
                if r % 2 == 0:
                    plain_s, plain_rewards = run_plain(items)
                    service_s, results = run_service(client, items)
                else:
                    service_s, results = run_service(client, items)
                    plain_s, plain_rewards = run_plain(items)
                disagree = [
                    {"id": items[i]["id"], "assay": res.reward, "plain": plain}
                    for i, (res, plain) in enumerate(zip(results, plain_rewards, strict=True))
                    if res.reward is None or abs(res.reward - plain) > 0.01
                ]
                statuses: dict[str, int] = {}
                for res in results:
                    statuses[res.status] = statuses.get(res.status, 0) + 1
                rounds.append(
                    {
                        "items": len(items),
                        "service_items_per_s": len(items) / service_s,
                        "plain_items_per_s": len(items) / plain_s,
                        "ratio": plain_s / service_s,
                        "service_s": service_s,
                        "plain_s": plain_s,
                        "cached": sum(res.cached for res in results),
                        "statuses": statuses,
                        "disagreements": disagree,
                    }
                )
                print(
                    f"round {r + 1}: assay {len(items) / service_s:6.1f} items/s, "
                    f"plain {len(items) / plain_s:6.1f} items/s, ratio {plain_s / service_s:.2f}, "
                    f"{len(disagree)} disagreements",
                    file=sys.stderr,
                )
            facts = {v.name: v.facts for v in client.verifiers()}["svg"]
        after_mb = rss_mb(service.process.pid)
    finally:
        service.close()

    report = {
        "benchmark": "svg_icons",
        "cores": os.cpu_count(),
        "size": SIZE,
        "plain": "cairosvg.svg2png + Pillow + numpy, one item after the other",
        "settings": settings,
        "service_rss_after_mb": round(after_mb, 1),
        "svg_facts": facts,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "rounds": rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    print(
        "| way | items/s |\n| --- | --- |\n"
        f"| assay serve (bwrap sandbox, {facts.get('workers')} warm renderers), one batch | "
        f"{med('service_items_per_s'):.1f} |\n"
        f"| plain loop: cairosvg.svg2png + numpy, no sandbox | {med('plain_items_per_s'):.1f} |\n"
        f"| ratio (assay / plain) | {report['median_ratio']:.2f} |\n"
        f"| items where the rewards differ by > 0.01 | "
        f"{sum(len(r['disagreements']) for r in rounds)} |"
    )
    return 0 if all(not r["disagreements"] for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())

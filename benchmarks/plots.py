"""The pictures in docs/: the stack table as speed against signature (from a results table), and the plan
of a call as a timeline of its stages' predicted cost (from the cost model).

    python benchmarks/plots.py [--table benchmarks/results/stacking.md] [--out docs/images]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from surf_accel import files
from surf_accel.catalogue import estimate
from surf_accel.config import SurfConfig

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"
STAGE_COLOURS = {"preview": (70, 130, 180), "preview_low": (120, 180, 220), "refine": (230, 140, 60),
                 "baseline": (150, 150, 150)}


def table_rows(path: Path) -> list[tuple[str, float, float]]:
    """``(run, speedup, direction %)`` of each row of a signature or stack table (markdown)."""
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    speed, direction = cols.index("speedup"), cols.index("direction %")
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0], float(re.match(r"([0-9.]+)x", cells[speed]).group(1)),
                     float(re.match(r"([0-9.]+)", cells[direction]).group(1))))
    return rows


def speed_signature_plot(rows: list[tuple[str, float, float]], title: str) -> Image.Image:
    """Speedup (x) against the share of videos moving as prompted (y), one labelled point per run."""
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    w, h, left, bottom, top, right = 900, 560, 70, 60, 50, 260
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 14), title, fill="black", font=font)
    x_max = max(r[1] for r in rows) * 1.1
    y_lo = min(50.0, min(r[2] for r in rows) - 5)

    def at(speed: float, direction: float) -> tuple[float, float]:
        return (left + (w - left - right) * speed / x_max,
                h - bottom - (h - top - bottom) * (direction - y_lo) / (100 - y_lo))

    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for k in range(0, int(x_max) + 1):
        x, _ = at(k, y_lo)
        d.text((x - 4, h - bottom + 6), f"{k}x", fill="black", font=small)
    for v in range(int(y_lo) // 10 * 10 + 10, 101, 10):
        _, y = at(0, v)
        d.text((left - 40, y - 6), f"{v}%", fill="black", font=small)
    d.text((left + 150, h - 30), "speedup over the base model (CPU time)", fill="black", font=small)
    d.text((left + 420, 18), "y: videos moving as prompted", fill="black", font=small)
    for i, (name, speed, direction) in enumerate(rows):
        x, y = at(speed, direction)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(200, 60, 40))
        d.text((x + 6, y - 7), str(i + 1), fill="black", font=small)
        d.text((w - right + 10, top + 16 * i), f"{i + 1} {name}"[:40], fill="black", font=small)
    return img


def plan_timeline(model: str, height: int, width: int, config: SurfConfig, **refine) -> Image.Image:
    """The baseline and SURF as bars of their stages' predicted FLOPs (transformer and VAE), to scale."""
    est = estimate(model, height, width, 81, config, **refine)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    w, h, left, bar = 1000, 230, 120, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{model} {height}x{width}, 81 frames: predicted cost of each stage "
                     f"(FLOPs, {est.speedup:.2f}x)", fill="black", font=font)
    scale = (w - left - 20) / est.baseline_total

    def bars(y: int, label: str, parts: list[tuple[str, float, tuple]]):
        d.text((10, y + 12), label, fill="black", font=small)
        x = left
        for name, flops, colour in parts:
            dx = flops * scale
            d.rectangle([x, y, x + max(dx, 1), y + bar], fill=colour, outline="white")
            if dx > 60:
                d.text((x + 4, y + 12), name, fill="black", font=small)
            x += dx

    bars(50, "baseline", [("50 steps", sum(s.total for s in est.baseline), STAGE_COLOURS["baseline"]),
                          ("VAE", sum(est.baseline_vae.values()), (90, 90, 90))])
    bars(110, "SURF", [(f"{s.name} ({s.steps})", s.total, STAGE_COLOURS.get(s.name, (180, 180, 180)))
                       for s in est.surf] + [("VAE", sum(est.surf_vae.values()), (90, 90, 90))])
    total = est.surf_total
    x = 10
    for st in est.surf:  # legend: each SURF stage's colour, steps and share of SURF's cost
        d.rectangle([x, 185, x + 12, 197], fill=STAGE_COLOURS.get(st.name, (180, 180, 180)))
        text = f"{st.name}: {st.steps} steps at {st.size[0]}x{st.size[1]} ({st.model}), {100 * st.total / total:.0f}%"
        d.text((x + 16, 184), text, fill="black", font=small)
        x += 20 + int(d.textlength(text, font=small)) + 16
    return img


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, default=RESULTS / "stacking.md")
    p.add_argument("--out", type=Path, default=DOCS)
    a = p.parse_args(argv)
    shots = {
        "stack_speed_signature.png": speed_signature_plot(table_rows(a.table), f"toy world: {a.table.name}"),
        "plan_timeline_wan14b_720p.png": plan_timeline("wan2.1-14b", 720, 1280, SurfConfig.preset("paper")),
        "plan_timeline_wan14b_720p_sibling.png": plan_timeline(
            "wan2.1-14b", 720, 1280, SurfConfig.preset("paper").replace(window=(4, 1000, 1000)),
            refiner_transformer="wan2.1-1.3b"),
    }
    for name, img in shots.items():
        files.write_image(a.out / name, img)
        print(f"wrote {a.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of a refiner training process against the number of training clips.

For each clip count a fresh ``train-refiner`` process (the shipped toy base, 128 x 128 x 17-frame clips,
a tiny refiner, a few steps, ``train.loader_workers: 0`` so the training process itself reads every
pair) makes its pair store and trains; its peak resident set size is the kernel's ``ru_maxrss`` of that
child. ``--before TREE`` also runs a checkout of an earlier surf_accel (run from TREE's root, so its
``surf_accel`` is imported) with the same config minus the keys it does not know.

    python benchmarks/pair_store_rss.py --clips 16 256 [--before /tmp/before]

Writes ``benchmarks/results/pair_store_rss.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surf_accel.bench.record import provenance, write  # noqa: E402

NEW_KEYS = {"pairs": ("shard_size",), "train": ("loader_workers",)}


def config(output_dir: Path, clips: int, steps: int, streamed: bool) -> dict:
    cfg = {"output_dir": str(output_dir), "base": "toy", "seed": 0,
           "data": {"source": "toy", "num_clips": clips, "val_clips": 2, "height": 128, "width": 128, "num_frames": 17},
           "pairs": {"preview_height": 32, "preview_width": 32, "handoff": "latent", "compression": "jpeg",
                     "shard_size": 16},
           "model": {"init": "scratch", "config": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
                                                   "ffn_dim": 64}, "num_steps": 4},
           "train": {"max_steps": steps, "batch_size": 4, "lr": 1e-3, "loader_workers": 0},
           "checkpoint": {"every": steps, "keep": 1}, "validation": {"every": 0}, "log_every": 5}
    if not streamed:
        for section, keys in NEW_KEYS.items():
            for k in keys:
                cfg[section].pop(k)
    return cfg


def peak_rss(tree: Path, cfg: dict, work: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one training process run from ``tree``."""
    path = work / "config.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "surf_accel.training", str(path), "--threads", "1", "--quiet"],
                            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"training in {tree} failed:\n{out.decode()[-3000:]}")
    return usage.ru_maxrss / 1024, time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--before", type=Path, default=None, help="an earlier checkout to measure beside this tree")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pair_store_rss.md")
    args = ap.parse_args(argv)
    trees = [("this tree", ROOT, True)] + ([("before", args.before.resolve(), False)] if args.before else [])
    rows = []
    for label, tree, streamed in trees:
        for n in args.clips:
            with tempfile.TemporaryDirectory() as d:
                mib, sec = peak_rss(tree, config(Path(d) / "run", n, args.steps, streamed), Path(d))
            rows.append((label, n, mib, sec))
            print(f"{label}: {n} clips -> peak RSS {mib:.0f} MiB ({sec:.0f} s)", flush=True)
    load = os.getloadavg()
    lines = provenance(argv) + [f"- load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
                                "- trees: " + ", ".join(f"{l} = `{t}`" for l, t, _ in trees), "",
                                "Peak resident set size (`ru_maxrss`) of one `python -m surf_accel.training` process "
                                f"that makes its pair store (128 x 128 x 17-frame toy clips) and trains {args.steps} "
                                "steps, reading the pairs itself (no loader workers).", "",
                                "| code | clips | peak RSS (MiB) | wall (s) |", "|---|---:|---:|---:|"]
    lines += [f"| {l} | {n} | {m:.0f} | {s:.0f} |" for l, n, m, s in rows]
    write(args.out, "Training process memory against the number of clips", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

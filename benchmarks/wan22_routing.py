"""Which Wan2.2 A14B expert each SURF stage runs (planner only: no weights, no model call).

For a call of N steps at H x W, every step's timestep ``int(1000 * sigma)`` (UniPC's integer
timesteps) is routed as the pipeline routes it, ``t >= 1000 * boundary_ratio``: the high-noise
expert, else the low-noise one; the refine runs the expert ``SurfConfig.refine_expert`` names.
Prints (high, low) step counts per stage, the expert switches per call (each one is a 14B weight
swap under ``enable_model_cpu_offload``), and the unpatched call's split for comparison.

    python benchmarks/wan22_routing.py [--steps 40] [--height 720 --width 1280]
"""

import argparse

from surf_accel import SurfConfig
from surf_accel.integrations.wan import WAN22_A14B_FAMILY
from surf_accel.planner import Request, SchedulerSpec, plan_stages


def routes(plan, boundary: float, expert: str):
    seq = []
    for s in plan.stages:
        for sigma in s.sigmas[:-1]:
            if s.name == "refine" and expert != "route":
                seq.append((s.name, expert))
            else:
                seq.append((s.name, "high" if int(sigma * 1000) >= boundary * 1000 else "low"))
    return seq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    a = ap.parse_args()
    req = Request(a.height, a.width, 81, a.steps)
    print("| flow shift | boundary | run | preview (high, low) | preview_low | refine | expert switches |")
    print("|---|---|---|---|---|---|---|")
    for shift in (5.0, 12.0):
        for boundary in (0.875, 0.9):
            sched = SchedulerSpec("unipc", shift)
            base = routes(plan_stages(req, WAN22_A14B_FAMILY, sched, SurfConfig.identity()), boundary, "route")
            n_high = sum(e == "high" for _, e in base)
            base_switches = sum(x[1] != y[1] for x, y in zip(base, base[1:]))
            print(f"| {shift:g} | {boundary} | unpatched | {n_high}, {len(base) - n_high} | | | {base_switches} |")
            for expert in ("low", "high", "route"):
                cfg = SurfConfig.preset("paper").replace(refine_expert=expert)
                plan = plan_stages(req, WAN22_A14B_FAMILY, sched, cfg)
                seq = routes(plan, boundary, expert)
                cells = []
                for stage in ("preview", "preview_low", "refine"):
                    es = [e for n, e in seq if n == stage]
                    cells.append(f"{es.count('high')}, {es.count('low')}")
                switches = sum(x[1] != y[1] for x, y in zip(seq, seq[1:]))
                print(f"| {shift:g} | {boundary} | paper, refine {expert} | {' | '.join(cells)} | {switches} |")


if __name__ == "__main__":
    main()

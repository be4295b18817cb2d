"""Mutation check of SURF's core modules, the stacking layer and refiner training: seed one plausible fault at a time
into a copy of the tree and run the tests that should catch it; a mutant the suite lets through is a
hole in the tests.

Each mutant replaces one exact snippet (which must occur exactly once) in one file. The copy is the
committed tree (``git archive HEAD``: uncommitted edits are not checked) plus the built extension,
with ``surf_accel/integrations`` and ``surf_accel/triton_kernels`` linked as setuptools'
``package_dir`` maps them, so the tests import the mutated copy and never the working tree. Results go to ``benchmarks/results/mutation.md``.

    python scripts/mutation_check.py [--only NAME ...] [--tests tests/... ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Fast, discriminating tests first: pytest -x stops at the first failure, so killed mutants die early.
TESTS = ["tests/test_surf_replay.py", "tests/test_runner.py", "tests/test_planner.py", "tests/test_config.py",
         "tests/test_refiner.py", "tests/test_api.py", "tests/integrations/test_wan.py",
         "tests/integrations/test_hunyuan_video.py", "tests/test_cost_model.py", "tests/test_surf_replay_wan22.py",
         "tests/integrations/test_wan22.py"]

STACKING_TESTS = ["tests/integrations/accelerators", "tests/bench"]
SHARDED_TESTS = ["tests/training/test_sharded.py"]
TRAINING_TESTS = ["tests/training/test_objective_meets_inference.py", "tests/training/test_pair_store.py",
                  "tests/training/test_pairs.py", "tests/training/test_base_pairs.py", "tests/training"]

# (name, file, original snippet, mutated snippet[, tests to run instead of --tests])
MUTANTS = [
    ("pixel handoff discards the preview", "surf_accel/refiner.py",
     "video = adapter.decode(pipe, preview).to(torch.float32)",
     "video = adapter.decode(pipe, torch.zeros_like(preview)).to(torch.float32)"),
    ("latent handoff (fused upsample + noise) discards the preview", "surf_accel/refiner.py",
     "return ops.upsample_mix(preview.to(torch.float32).contiguous(), noise, sigma, factor,",
     "return ops.upsample_mix(torch.zeros_like(preview, dtype=torch.float32), noise, sigma, factor,"),
    ("latent handoff (resize path) discards the preview", "surf_accel/refiner.py",
     "z_lr = resize_latent(preview.to(torch.float32), dst, config.latent_resize)",
     "z_lr = resize_latent(torch.zeros_like(preview, dtype=torch.float32), dst, config.latent_resize)"),
    ("trained refiner starts from noise", "surf_accel/refiner.py",
     "    if noise is None:\n        return z_lr",
     "    if noise is None:\n        return torch.randn_like(z_lr)"),
    ("reshift mode ignored (always consistent)", "surf_accel/runner.py",
     'op_mode = "consistent" if cfg.reshift == "consistent" else "paper"', 'op_mode = "consistent"'),
    ("paper reshift at the low schedule's level", "surf_accel/planner.py",
     'if config.reshift == "paper" \\', 'if False \\'),
    ("reshift x0 sign flipped", "surf_accel/runner.py",
     "float(sigma), float(nxt.reshift_noise), factor, op_mode)",
     "-float(sigma), float(nxt.reshift_noise), factor, op_mode)"),
    ("conditional velocity alone (no CFG)", "surf_accel/runner.py",
     "return v_c if v_u is None else v_u + guidance * (v_c - v_u)", "return v_c"),
    ("CFG direction flipped", "surf_accel/runner.py",
     "return v_c if v_u is None else v_u + guidance * (v_c - v_u)",
     "return v_c if v_u is None else v_c + guidance * (v_u - v_c)"),
    ("predicted re-noise not rescaled", "surf_accel/runner.py",
     "return (pooled / std).contiguous()", "return pooled.contiguous()"),
    ("refine noise at the wrong level", "surf_accel/runner.py",
     "self.call), float(stage.sigmas[0])", "self.call), float(stage.sigmas[1])"),
    ("low stage on the preview's shift", "surf_accel/planner.py",
     "low_sigmas = scheduler.shifted(t_grid[k:], shift_low)", "low_sigmas = scheduler.shifted(t_grid[k:], shift_opt)"),
    ("refine start not unshifted", "surf_accel/planner.py",
     "t_star = unshift_sigma(start, shift_ref)", "t_star = start"),
    ("trained refiner with CFG", "surf_accel/runner.py",
     '        if stage.model == "trained_refiner":\n            guidance = 1.0\n', ""),
    ("trained refiner Euler step reversed", "surf_accel/runner.py",
     "float(g), sigma, float(sigmas[i + 1]))", "float(g), float(sigmas[i + 1]), sigma)"),
    ("window attention never applied", "surf_accel/runner.py",
     "return window_context(model, stage.window)", "return window_context(model, None)"),
    ("refine_guidance ignored", "surf_accel/planner.py",
     "guidance=config.refine_guidance, use_scheduler=use_sched", "guidance=None, use_scheduler=use_sched"),
    ("interrupt keeps the preview size", "surf_accel/runner.py",
     "                    latents = self._to_request_size(self.adapter.finalize(pipe, latents, call, ctx))\n", ""),
    ("switch one step late", "surf_accel/config.py",
     "k = min(n, max(1, round(self.switch_fraction * n)))", "k = min(n, max(1, round(self.switch_fraction * n) + 1))"),
    ("call's steps ignored", "surf_accel/config.py",
     "max(\n            1, round(self.preview_fraction * num_inference_steps))", "40"),
    ("trained refiner's num_steps ignored", "surf_accel/config.py",
     "elif trained_refiner_steps is not None:", "elif False:"),
    ("identity in float32 arithmetic", "surf_accel/config.py",
     'shift_rule="constant", step_precision="pipeline", name="identity"',
     'shift_rule="constant", step_precision="float32", name="identity"'),
    ("optimal size above the request kept", "surf_accel/planner.py",
     "        if oh > request.height or ow > request.width:\n            # never plan more work",
     "        if False:\n            # never plan more work"),
    ("flow shift below 1 kept", "surf_accel/planner.py", "if shift < 1.0 <= scheduler.shift:", "if False:"),
    ("I2V condition dropped", "integrations/wan.py",
     "else torch.cat([latents, ctx], dim=1)", "else torch.cat([latents, torch.zeros_like(ctx)], dim=1)"),
    ("Wan uncond branch gets the prompt", "integrations/wan.py",
     "text = call.negative_prompt_embeds if negative else call.prompt_embeds",
     "text = call.prompt_embeds"),
    ("Wan VAE encode not normalised", "integrations/wan.py", "return (z - mean) * inv_std", "return z"),
    ("Wan2.2 step at the boundary to the low-noise expert", "integrations/wan.py",
     'which = "high" if timestep >= boundary else "low"', 'which = "high" if timestep > boundary else "low"'),
    ("Wan2.2 low-noise expert with guidance_scale", "integrations/wan.py",
     'else call.extra["guidance_scale_2"]', "else call.guidance_scale"),
    ("Wan2.2 refine expert ignored", "integrations/wan.py",
     'which = config.refine_expert if stage.name == "refine" else "route"', 'which = "route"'),
    ("TI2V first frame not put back before the handoff", "surf_accel/runner.py",
     "self._handoff(self.adapter.finalize(pipe, latents, call, ctx), stage)", "self._handoff(latents, stage)"),
    ("TI2V first-frame tokens not at timestep 0", "integrations/wan.py",
     "t = (mask[0][0][:, ::2, ::2] * timestep)", "t = (torch.ones_like(mask[0][0][:, ::2, ::2]) * timestep)"),
    ("HunyuanVideo text mask dropped", "integrations/hunyuan_video.py",
     'encoder_attention_mask=e["negative_mask"] if negative else e["mask"],',
     'encoder_attention_mask=torch.ones_like(e["mask"]),'),
    ("HunyuanVideo uncond branch gets the prompt", "integrations/hunyuan_video.py",
     "text = call.negative_prompt_embeds if negative else call.prompt_embeds",
     "text = call.prompt_embeds"),
    ("HunyuanVideo embedded guidance not x1000", "integrations/hunyuan_video.py",
     'dtype=tdtype, device=device) * 1000.0', 'dtype=tdtype, device=device) * 1.0'),
    ("HunyuanVideo latents not scaled on encode", "surf_accel/family.py",
     "return z * pipe.vae.config.scaling_factor", "return z"),
    # the stacking layer (issue 12): its own tests
    ("stage protocol never resets the caches' state", "surf_accel/stages.py",
     "    reg.reset_stateful_hooks(recurse=True)", "    pass", STACKING_TESTS),
    ("apply_* caches left out of cache_context", "surf_accel/stages.py",
     "    reg.invalidate_child_registries_cache()\n    reg.reset", "    reg.reset", STACKING_TESTS),
    ("cache_context step index counted over the call", "surf_accel/stages.py",
     "return dict(step_index=self.index,", "return dict(step_index=self.stage.step_offset + self.index,",
     STACKING_TESTS),
    ("two caches on one model allowed", "surf_accel/stages.py",
     "if len(caches) > 1:", "if len(caches) > 2:", STACKING_TESTS),
    ("TeaCache skips a stage's last step", "integrations/accelerators/surf_teacache.py",
     "or i < self.retention or i == n - 1", "or i < self.retention", STACKING_TESTS),
    ("TeaCache threshold comparison reversed", "integrations/accelerators/surf_teacache.py",
     "compute = not state.accumulated < self.config.threshold", "compute = state.accumulated < self.config.threshold",
     STACKING_TESTS),
    ("TeaCache's rule traced by torch.compile", "integrations/accelerators/surf_teacache.py",
     "    @torch.compiler.disable\n    def decide", "    def decide", STACKING_TESTS),
    ("FasterCache counter restarts inside its skip window", "integrations/accelerators/diffusers_caches.py",
     "hook.state.iteration = hook.block_skip_range", "hook.state.iteration = 0", STACKING_TESTS),
    ("MagCache allowed across SURF's stages", "integrations/accelerators/diffusers_caches.py",
     'if kind == "MagCache" and not _is_single_schedule(plan):', "if False:", STACKING_TESTS),
    ("cache-dit contexts not refreshed at a stage start", "integrations/accelerators/cache_dit.py",
     "cache_dit.refresh_context(model, num_inference_steps=stage.steps)", "pass", STACKING_TESTS),
    ("compile watch silent", "integrations/accelerators/compile.py", "if len(set(late)) >= 3:", "if False:",
     STACKING_TESTS),
    ("stack table counts computed calls as skipped", "surf_accel/bench/stacking.py",
     "return {s: 1.0 - computed[s] / calls[s] for s in calls}", "return {s: computed[s] / calls[s] for s in calls}",
     STACKING_TESTS),
    ("prepared call's batch ignores videos per prompt", "surf_accel/family.py",
     "batch=n_prompts * nvp,", "batch=n_prompts,"),
    ("window grid hook swaps height and width", "integrations/window_processors.py",
     "state.grid = (t // patch[0], h // patch[1], w // patch[2])",
     "state.grid = (t // patch[0], w // patch[2], h // patch[1])",
     ["tests/integrations/test_window_processors.py", "tests/test_surf_replay.py"]),
    ("training objective's target velocity reversed", "surf_accel/training/objective.py",
     "return (1 - sv) * z_hr + sv * z_lr, z_lr - z_hr", "return (1 - sv) * z_hr + sv * z_lr, z_hr - z_lr",
     TRAINING_TESTS),
    ("training path's ends swapped", "surf_accel/training/objective.py",
     "return (1 - sv) * z_hr + sv * z_lr, z_lr - z_hr", "return sv * z_hr + (1 - sv) * z_lr, z_lr - z_hr",
     TRAINING_TESTS),
    ("training timestep not scaled to the scheduler's", "surf_accel/training/objective.py",
     "timestep=(s * num_train_timesteps).to(x.device)", "timestep=s.to(x.device)", TRAINING_TESTS),
    ("validation's Euler refine steps backwards", "surf_accel/training/objective.py",
     "x = x + (sig[i + 1] - sig[i]) * v", "x = x + (sig[i] - sig[i + 1]) * v", TRAINING_TESTS),
    ("pair degradations seeded by the position in the shard", "surf_accel/training/pairs.py",
     "d = sample_degradation(cfg, random.Random(seed * 1_000_003 + i))",
     "d = sample_degradation(cfg, random.Random(seed * 1_000_003 + i - start))", TRAINING_TESTS),
    ("clip pair's preview made from the full-size clip", "surf_accel/training/pairs.py",
     "low = degrade(downsample(x, cfg.preview_height, cfg.preview_width)[0], d,", "low = degrade(x[0], d,",
     TRAINING_TESTS),
    ("base pair's preview caught a step early", "surf_accel/training/base_pairs.py",
     "if index == preview_steps - 1:", "if index == preview_steps - 2:", TRAINING_TESTS),
    ("shard store redoes finished shards", "surf_accel/training/pair_store.py",
     'return meta.get("key") == self.key and meta.get("span") == json.dumps(list(self.span(j)))',
     'return False', TRAINING_TESTS),
    ("shard store accepts a shard of another recipe", "surf_accel/training/pair_store.py",
     'return meta.get("key") == self.key and meta.get("span") == json.dumps(list(self.span(j)))',
     'return meta.get("span") == json.dumps(list(self.span(j)))', TRAINING_TESTS),
    ("pair reader looks in the wrong shard", "surf_accel/training/pair_store.py",
     "j = bisect.bisect_right(self._starts, i) - 1", "j = max(0, bisect.bisect_left(self._starts, i) - 1)",
     TRAINING_TESTS),
    ("caption trimmed one token short", "surf_accel/training/pair_store.py",
     "n = int(used.max()) + 1 if used.numel() else 1", "n = int(used.max()) if used.numel() else 1",
     TRAINING_TESTS),
    ("every pair of a shard reads the first caption", "surf_accel/training/pair_store.py",
     'out["text_index"] = torch.tensor([where[c] for c in captions], dtype=torch.int64)',
     'out["text_index"] = torch.zeros(len(captions), dtype=torch.int64)', TRAINING_TESTS),
    ("every process draws the same pairs", "surf_accel/training/pair_store.py",
     "first = drawn + self.rank * batch", "first = drawn", TRAINING_TESTS),
    ("every epoch in the same order", "surf_accel/training/pair_store.py",
     "orders[epoch] = _epoch_order(self.n, self.seed, epoch)", "orders[epoch] = _epoch_order(self.n, self.seed, 0)",
     TRAINING_TESTS),
    ("a resumed run starts its epoch again", "surf_accel/training/loop.py",
     "a.process_index, step)", "a.process_index, 0)", TRAINING_TESTS),
    ("latent noise on z_lr never added", "surf_accel/training/loop.py",
     "    z_lr = objective.degrade_latent(z_lr, std, g)\n", "", TRAINING_TESTS),
    ("EMA moves towards the weights by the decay", "surf_accel/training/ema.py",
     "self.shadow[n].lerp_(p.detach().float(), 1.0 - d)", "self.shadow[n].lerp_(p.detach().float(), d)",
     TRAINING_TESTS),
    ("sharded rows saved at offset 0", "surf_accel/training/sharding.py",
     "    return start\n", "    return 0\n", SHARDED_TESTS),
    ("sharded EMA not restored on resume", "surf_accel/training/sharding.py",
     "ema.load_tensors(read_shards(path, r, w)[0], str(path))", "pass", SHARDED_TESTS),
    ("sharded gradients reduced in bf16", "surf_accel/training/sharding.py",
     "reduce_dtype=torch.float32", "reduce_dtype=torch.bfloat16", SHARDED_TESTS),
    ("sharded resume with another process count accepted", "surf_accel/training/loop.py",
     "    if saved != world_size:", "    if False:", SHARDED_TESTS),
    ("blocks not sharded as their own units", "surf_accel/training/sharding.py",
     "        fully_shard(block, mesh=mesh, mp_policy=policy)", "        pass", SHARDED_TESTS),
    ("refiner transformer costed as a trained refiner", "surf_accel/catalogue.py",
     "trained_refiner=refiner is not None, refiner_transformer=refiner_transformer is not None,",
     "trained_refiner=ref_spec is not None, refiner_transformer=False,"),
]


def make_copy(dest: Path) -> None:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for so in glob.glob(str(ROOT / "surf_accel" / "_C*.so")):
        shutil.copy2(so, dest / "surf_accel")
    for pkg in ("integrations", "triton_kernels"):
        os.symlink(dest / pkg, dest / "surf_accel" / pkg)


def run_mutant(copy: Path, mutant, tests: list[str]) -> tuple[str, float, str]:
    name, rel, old, new = mutant[:4]
    tests = mutant[4] if len(mutant) > 4 else tests
    path = copy / rel
    text = path.read_text()
    if text.count(old) != 1:
        return "stale (snippet not found exactly once)", 0.0, ""
    path.write_text(text.replace(old, new))
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           cwd=copy, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(copy)})
    finally:
        path.write_text(text)
    failed = [ln.split(" - ")[0].removeprefix("FAILED ") for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
    return ("killed" if r.returncode != 0 else "SURVIVED"), time.perf_counter() - t0, (failed[:1] or [""])[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="mutant names containing one of these")
    p.add_argument("--tests", nargs="*", default=TESTS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.md")
    a = p.parse_args(argv)
    mutants = [m for m in MUTANTS if not a.only or any(o in m[0] for o in a.only)]
    started = datetime.datetime.now(datetime.timezone.utc)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="surf_mutants_") as tmp:
        copy = Path(tmp) / "tree"
        make_copy(copy)
        every = list(dict.fromkeys(t for m in mutants for t in (m[4] if len(m) > 4 else a.tests)))
        baseline = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *every],
                                  cwd=copy, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(copy)})
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:])
            raise SystemExit("the unmutated copy fails its tests: fix them before checking mutants")
        for m in mutants:
            verdict, secs, test = run_mutant(copy, m, a.tests)
            rows.append((m[0], m[1], verdict, secs, test))
            print(f"{verdict:9s} {secs:6.1f} s  {m[0]} ({m[1]})  {test}", flush=True)
    killed = sum(r[2] == "killed" for r in rows)
    lines = [f"# Mutation check ({killed}/{len(rows)} killed)", "",
             f"- commit checked: {commit}; date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, {platform.platform()}",
             f"- command: `python scripts/{Path(__file__).name} {shlex.join(argv or sys.argv[1:])}`".rstrip(),
             f"- tests run per mutant (stopping at the first failure): {' '.join(a.tests)}; the stacking layer's "
             f"mutants: {' '.join(STACKING_TESTS)}; training's: {' '.join(TRAINING_TESTS)}; sharded training's: "
             f"{' '.join(SHARDED_TESTS)}", "",
             "| mutant | file | verdict | seconds | first failing test |", "|---|---|---|---|---|",
             *(f"| {n} | `{f}` | {v} | {s:.0f} | {t and f'`{t}`'} |" for n, f, v, s, t in rows)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"{killed}/{len(rows)} killed; wrote {a.out}")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

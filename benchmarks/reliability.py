"""Issue 23's reliability table: every bad input and fault of ``tests/reliability``, run against this
tree ("after") and, with ``--before``, against a checkout of the code before the fixes.

    git worktree add --detach /tmp/before <commit before the fixes>   # plus its built extension
    python benchmarks/reliability.py --before /tmp/before

The tests are copied into the older checkout for the run (and removed again); each runs with
``python -m pytest`` from its tree's root, so that tree's ``surf_accel`` is the one imported. Writes
``benchmarks/results/reliability.md``: one row per case (what it was before, what it is now) and the
counts: clear errors, silent wrong results and data lost after the fixes (the last two must be 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surf_accel import files  # noqa: E402
from surf_accel.bench.record import provenance  # noqa: E402

# what each test's case was before the fixes: "silent" a wrong result with no error, "data" a file lost,
# replaced or left broken, "error" a late, unclear or missing error, "refused" an input diffusers takes,
# "gap" a fault no test caught, "new" a guard of this change's own (no earlier behaviour to compare);
# and what it is now: "error" a clear error (exit code 2 for the CLI's arguments), "result" the right result
CASES = {
    "test_a_failed_video_write_is_an_error_and_leaves_nothing[silent]": (2, "silent", "error", "ffmpeg leaves a 4 KB unreadable video and returns"),
    "test_a_failed_video_write_is_an_error_and_leaves_nothing[enospc]": (2, "data", "error", "disk full while the video is written"),
    "test_a_failed_write_keeps_the_previous_video": (2, "data", "error", "disk full while an existing video is replaced (--overwrite)"),
    "test_unwritable_output_folder_is_refused_before_loading": (2, "error", "error", "output folder is a file"),
    "test_read_only_folder_is_refused_before_loading": (2, "error", "error", "read-only output folder (chmod; skipped as root)"),
    "test_existing_outputs_are_refused_unless_overwrite": (3, "data", "error", "existing video and _baseline video without --overwrite"),
    "test_overwrite_replaces_and_names_every_file": (3, "data", "result", "--overwrite: both files replaced, each named"),
    "test_bad_arguments_stop_before_loading[preset]": (5, "error", "error", "--baseline --preset bogus"),
    "test_bad_arguments_stop_before_loading[cache]": (5, "error", "error", "--cache deepcache:1"),
    "test_bad_arguments_stop_before_loading[size]": (5, "error", "error", "--height 40 (off the 16-px grid)"),
    "test_bad_arguments_stop_before_loading[device]": (5, "error", "error", "--device cuda:7"),
    "test_bad_arguments_stop_before_loading[image]": (5, "error", "error", "--image of a missing file"),
    "test_output_that_is_a_folder_or_no_video_stops_before_loading": (5, "error", "error", "--output a folder / v.txt"),
    "test_folder_that_is_no_model_is_one_line": (5, "error", "error", "a folder that is not a model"),
    "test_cuda_on_a_cpu_torch_is_one_line": (5, "error", "error", "--device cuda on CPU torch"),
    "test_max_sequence_length_must_be_positive[0]": (11, "silent", "error", "--max-sequence-length 0"),
    "test_max_sequence_length_must_be_positive[-5]": (11, "error", "error", "--max-sequence-length -5"),
    "test_baseline_is_the_unpatched_pipeline_without_the_cache": (11, "silent", "result", "--baseline --cache fbc:0.6"),
    "test_overlapping_calls_each_give_their_serial_result[one pipeline]": (1, "silent", "result", "two threads, one patched pipeline, windowed refines overlapping"),
    "test_overlapping_calls_each_give_their_serial_result[two pipelines, one transformer]": (1, "silent", "result", "two patched pipelines sharing a transformer, refines overlapping"),
    "test_a_patched_pipeline_pickles_and_copies": (6, "error", "result", "pickle / deepcopy a patched pipeline"),
    "test_callbacks_see_each_stage": (9, "error", "result", "a callback asks which stage runs (pipe.surf_stage)"),
    "test_a_callback_returning_latents_of_another_stage_is_refused": (9, "silent", "error", "callback returns request-size latents in the preview"),
    "test_identity_accepts_the_numbers_diffusers_accepts[numpy ints]": (10, "refused", "result", "identity, height=np.int64(32)"),
    "test_identity_accepts_the_numbers_diffusers_accepts[whole floats]": (10, "refused", "result", "identity, height=32.0"),
    "test_identity_accepts_the_numbers_diffusers_accepts[numpy frames and steps]": (10, "refused", "result", "identity, num_frames / steps as np.int64"),
    "test_identity_accepts_latents_of_another_batch": (10, "refused", "result", "identity, latents of batch 2 with one prompt"),
    "test_a_failed_export_keeps_the_previous_refiner": (4, "data", "error", "refiner export fails after its config.json"),
    "test_an_export_never_empties_a_folder_of_other_files": (4, "new", "error", "export into a folder holding other files"),
    "test_the_toy_refiner_config_exports_outside_the_package": (4, "data", "result", "toy train.yaml's export folder"),
    "test_an_export_into_the_package_is_refused": (4, "data", "error", "export.dir inside the installed package"),
    "test_training_into_the_package_is_refused_before_it_starts": (4, "data", "error", "output_dir inside the installed package"),
    "test_config_errors_name_the_file_and_key[fractional-steps]": (8, "silent", "error", "refiner num_steps: 2.7"),
    "test_config_errors_name_the_file_and_key[bool-steps]": (8, "silent", "error", "refiner num_steps: true"),
    "test_config_errors_name_the_file_and_key[future-format]": (8, "silent", "error", "refiner format_version: 99"),
    "test_config_errors_name_the_file_and_key[no-transformer-config]": (8, "error", "error", "refiner config without transformer_config"),
    "test_truncated_config_names_the_file": (8, "error", "error", "truncated refiner config.json"),
    "test_truncated_weights_name_the_file": (8, "error", "error", "truncated refiner safetensors"),
    "test_non_finite_weights_are_refused_naming_the_tensor": (8, "silent", "error", "NaN in a refiner weight"),
    "test_resume_skips_a_damaged_newest_checkpoint[trainer_state.json]": (7, "error", "result", "newest checkpoint's trainer_state.json truncated"),
    "test_resume_skips_a_damaged_newest_checkpoint[model-rank00000-of-00001.safetensors]": (7, "error", "result", "newest checkpoint's model-rank00000-of-00001.safetensors truncated"),
    "test_resume_skips_a_damaged_newest_checkpoint[optimizer-rank00000-of-00001.safetensors]": (7, "error", "result", "newest checkpoint's optimizer-rank00000-of-00001.safetensors truncated"),
    "test_resume_skips_a_damaged_newest_checkpoint[ema-rank00000-of-00001.safetensors]": (7, "error", "result", "newest checkpoint's ema-rank00000-of-00001.safetensors truncated"),
    "test_every_checkpoint_damaged_is_an_error_naming_them": (7, "error", "error", "every checkpoint damaged"),
    "test_full_disk_while_saving_a_checkpoint": (7, "error", "error", "disk full while a checkpoint is saved"),
    "test_a_checkpoint_is_complete_or_absent": (7, "error", "result", "save stopped before trainer_state.json"),
    "test_faster_cache_state_under_identity_as_unpatched": (12, "silent", "result", "diffusers' FasterCache state check, identity-patched HunyuanVideo"),
    "test_apply_teacache_given_a_pipeline_names_the_transformer": (13, "error", "error", "apply_teacache(pipe, config)"),
    "test_cache_dit_warms_up_once_per_stage_of_its_own_length": (14, "gap", "result", "cache-dit, a refine longer than the call (seeded fault, refresh_context with the request's steps: this test fails, 15 vs 12 block calls, while tests/integrations/accelerators/test_cache_dit.py passes)"),
    "test_full_disk_keeps_the_previous_file": (2, "new", "error", "surf_accel.files: os.write fails with ENOSPC"),
    "test_failed_folder_keeps_the_previous_folder": (4, "new", "error", "surf_accel.files: a folder write fails half-way"),
    "test_torch_style_failure_on_a_full_file_system_is_called_disk_full": (7, "new", "error", "surf_accel.files: torch's 'unexpected pos' on a full disk"),
}


def commit(tree: Path) -> str:
    """The commit ``tree`` has checked out (``+`` when it has uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True,
                           text=True).stdout
    return head.strip() + ("+" if dirty.strip() else "")


def run(tree: Path, junit: Path) -> dict[str, tuple[str, str]]:
    """``python -m pytest tests/reliability`` in ``tree``: test name -> (outcome, first line of its message)."""
    subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                    f"--junitxml={junit}"], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip().splitlines()[0][:110] if node.get("message") else ""
                break
        out[case.get("name")] = (outcome, message)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, default=None, help="a checkout of the code before the fixes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        after = run(ROOT, Path(tmp) / "after.xml")
        before = {}
        if args.before is not None:
            dest = args.before / "tests" / "reliability"
            if dest.exists():
                raise SystemExit(f"{dest} exists; give a checkout without tests/reliability")
            shutil.copytree(ROOT / "tests" / "reliability", dest)
            try:
                before = run(args.before, Path(tmp) / "before.xml")
            finally:
                shutil.rmtree(dest)
    unknown = sorted(set(after) - set(CASES))
    if unknown:
        raise SystemExit(f"tests without a row in CASES: {', '.join(unknown)}")
    rows, counts = [], {"clear errors": 0, "right results": 0, "silent wrong results": 0, "data lost": 0,
                        "other failures": 0, "skipped": 0}
    for name, (finding, kind, now, case) in sorted(CASES.items(), key=lambda kv: (kv[1][0], kv[0])):
        outcome, message = after.get(name, ("not run", ""))
        b_outcome, b_message = before.get(name, ("not run", ""))
        if outcome == "skipped":
            counts["skipped"] += 1
        elif outcome == "passed":
            counts["clear errors" if now == "error" else "right results"] += 1
        elif kind == "data":
            counts["data lost"] += 1
        elif kind == "silent" or now == "result":
            counts["silent wrong results"] += 1
        else:
            counts["other failures"] += 1
        was = f"{kind}: {b_outcome}" + (f" ({b_message})" if b_message else "")
        rows.append(f"| {finding} | {case} | {was.replace('|', '/')} | "
                    f"{'clear error' if now == 'error' else 'right result'}: {outcome} |")
    kinds_before = {k: sum(1 for n, (_, kind, _, _) in CASES.items() if kind == k and before.get(n, ("",))[0] == "failed")
                    for k in ("silent", "data", "error", "refused", "gap", "new")}
    lines = provenance(argv, program="python benchmarks/reliability.py") + [
        f"- after: this tree at {commit(ROOT)}"
        + (f"; before: {args.before} at {commit(args.before)}" if args.before is not None else ""),
        "",
        f"{len(CASES)} cases (tests/reliability). After the fixes: {counts['clear errors']} end in a clear error, "
        f"{counts['right results']} give the right result, {counts['silent wrong results']} silent wrong results, "
        f"{counts['data lost']} with data lost, {counts['other failures']} other failures, {counts['skipped']} skipped.",
        "",
        "Before the fixes (tests failing there, by what the case was): " + ", ".join(
            f"{v} {k}" for k, v in kinds_before.items()) + "." if before else "Before: not run (no --before).",
        "",
        "Kinds: silent = a wrong result with no error; data = a file lost, replaced or left broken; error = a "
        "late, unclear or missing error; refused = an input diffusers takes, refused; gap = a fault no test "
        "caught (verified by seeding it); new = a guard of the fix itself (no earlier code to fail).",
        "",
        "| finding | case | before | after |",
        "|---|---|---|---|",
        *rows,
    ]
    files.write_text(args.out, "\n".join(["# Reliability (issue 23): bad inputs and faults", "", *lines, ""]))
    print(f"wrote {args.out}")
    return 0 if counts["silent wrong results"] == counts["data lost"] == counts["other failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

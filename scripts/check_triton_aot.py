#!/usr/bin/env python
"""Compile every Triton kernel of ``surf_accel.triton_kernels`` ahead of time for real GPUs,
without a GPU (docs/design.md 8): a CI check that each kernel builds for sm_80 and sm_90 in every dtype and
constexpr variant its launchers use, and a report of what each one costs on chip.

Kernel modules declare their compile variants in a module-level ``AOT_SPECS``: a list (or a
function returning a list) whose entries are either tuples ``(kernel, signature, constexprs)``
or ``(kernel, signature, constexprs, options)``, or dicts with

    kernel      the @triton.jit function
    signature   {argument name: Triton type} for every argument, in order: "*fp32", "*bf16",
                "i32", "fp32", ..., and "constexpr" for compile-time constants
    constexprs  {argument name: value} for every "constexpr" argument
    num_warps   (optional, default 4) as the launcher passes it
    options     (optional) further compile options the launcher passes (num_stages, ...)
    label       (optional) a short description of the variant, e.g. "FACTOR=2"
    dtype       (optional) the element type, for the report

Any top-level ``@triton.jit`` function whose name ends in ``_kernel`` must appear in its module's
``AOT_SPECS``; the script fails otherwise, so a new kernel cannot be left out unnoticed.

Prints one line per kernel / variant / dtype / target with shared memory per block (bytes, from the
compiled metadata; over the architecture's limit counts as a failure: the kernel could not launch)
and, per thread, registers, spill stores/loads and stack frame (bytes, from ptxas -v; with
--use-cache and a cache hit, from cuobjdump's resource usage). Exits non-zero on any failure.

Run it WITHOUT ``TRITON_INTERPRET=1``: the interpreter replaces @triton.jit functions with Python
ones that cannot be compiled.

    python scripts/check_triton_aot.py [--arch 80 90] [-k SUBSTRING] [-j JOBS] [--use-cache]
"""

from __future__ import annotations

import argparse
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit(
        "check_triton_aot.py: TRITON_INTERPRET=1 is set. The interpreter swaps @triton.jit kernels "
        "for Python functions that cannot be compiled ahead of time; run this script without it, "
        "e.g. `env -u TRITON_INTERPRET python scripts/check_triton_aot.py`."
    )

import concurrent.futures
import contextlib
import importlib
import io
import pkgutil
import re
import shutil
import subprocess
import tempfile
import time
import traceback
import warnings

DEFAULT_ARCHS = (80, 90)
# Largest shared memory one block may use (opt-in), bytes, per compute capability (CUDA
# programming guide, "Technical Specifications per Compute Capability"). A kernel compiled past
# it builds but cannot launch (Triton raises OutOfResources), so it counts as a failure here.
MAX_SHARED_PER_BLOCK = {
    70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376,
    90: 232448, 100: 232448, 103: 232448, 120: 101376,
}
PACKAGE = "surf_accel.triton_kernels"


def normalize(spec) -> dict:
    """An AOT_SPECS entry as a dict (tuples become {kernel, signature, constexprs, options})."""
    if isinstance(spec, dict):
        return spec
    kernel, signature, constexprs, *rest = spec
    if len(rest) > 1:
        raise ValueError(f"an AOT_SPECS tuple has 3 or 4 items, got {len(spec)}")
    options = dict(rest[0]) if rest else {}
    out = {"kernel": kernel, "signature": signature, "constexprs": constexprs}
    if "num_warps" in options:
        out["num_warps"] = options.pop("num_warps")
    out["options"] = options
    if not rest:
        # Tuples carry no label: name the variant by its non-block constexprs.
        out["label"] = " ".join(f"{k}={v}" for k, v in constexprs.items() if not k.startswith("BLOCK"))
    return out


def module_specs(module) -> list[dict]:
    specs = getattr(module, "AOT_SPECS", None)
    if callable(specs):
        specs = specs()
    return [normalize(s) for s in (specs or [])]


def collect_specs(pattern: str | None) -> tuple[list[tuple[str, int, dict]], list[str]]:
    """All (module name, index in its AOT_SPECS, spec) entries, and problems found while collecting."""
    import triton

    package = importlib.import_module(PACKAGE)
    entries, problems = [], []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        modname = f"{PACKAGE}.{info.name}"
        try:
            module = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - reported as a failure
            problems.append(f"{modname}: import failed\n{traceback.format_exc()}")
            continue
        try:
            specs = module_specs(module)
        except Exception:  # noqa: BLE001 - reported as a failure
            problems.append(f"{modname}: bad AOT_SPECS\n{traceback.format_exc()}")
            continue
        kernels = {
            name for name, obj in vars(module).items()
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel")
            and obj.fn.__module__ == module.__name__
        }
        covered = {spec["kernel"].__name__ for spec in specs}
        for name in sorted(kernels - covered):
            problems.append(f"{modname}.{name}: a kernel with no entry in AOT_SPECS")
        for i, spec in enumerate(specs):
            if pattern is None or pattern in describe(info.name, spec):
                entries.append((modname, i, spec))
    return entries, problems


def describe(short_module: str, spec: dict) -> str:
    dtype = spec.get("dtype") or next(
        (t[1:] for t in spec["signature"].values() if t.startswith("*")), "-")
    label = f" [{spec['label']}]" if spec.get("label") else ""
    return f"{short_module}.{spec['kernel'].__name__}{label} {dtype}"


def ptxas_usage(log: str, function: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes per thread of ``function`` from ``ptxas -v`` output
    (Triton prints it with knobs.nvidia.dump_ptxas_log); {} if absent (e.g. a kernel-cache hit)."""
    name = re.escape(function)
    usage = {}
    props = re.search(rf"Function properties for {name}\s*\n\s*(\d+) bytes stack frame, "
                      r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if props:
        usage.update(zip(("stack", "spill_stores", "spill_loads"), map(int, props.groups())))
    regs = re.search(rf"Compiling entry function '{name}'[\s\S]*?Used (\d+) registers", log)
    if regs:
        usage["regs"] = int(regs.group(1))
    return usage


def cuobjdump_usage(cubin: bytes, function: str) -> dict[str, int]:
    """Registers and stack/local bytes per thread of ``function`` in ``cubin``, via cuobjdump;
    {} if the tool is unavailable. (The fallback when ptxas did not run: a kernel-cache hit.)"""
    try:
        import triton

        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:  # noqa: BLE001 - any problem: fall back to the PATH
        tool = shutil.which("cuobjdump")
    if not tool:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            res = subprocess.run([tool, "--dump-resource-usage", f.name],
                                 check=False, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return {}
    # One "Function <name>:" block per function in the cubin (helpers may appear too).
    for block in re.split(r"\n\s*Function ", res.stdout)[1:]:
        name, _, body = block.partition(":")
        if name.strip() == function:
            fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", body))
            return {"regs": int(fields.get("REG", -1)), "stack": int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0))}
    return {}


def compile_one(modname: str, index: int, arch: int) -> tuple[bool, str]:
    """Compile entry ``index`` of ``modname.AOT_SPECS`` for sm_``arch``; (ok, report line)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    module = importlib.import_module(modname)
    spec = module_specs(module)[index]
    name = f"{describe(modname.rsplit('.', 1)[-1], spec)} sm_{arch}"
    t0 = time.perf_counter()
    try:
        kernel, signature, constexprs = spec["kernel"], spec["signature"], spec.get("constexprs", {})
        missing = [a for a in kernel.arg_names if a not in signature]
        if missing:
            raise ValueError(f"signature lacks arguments {missing}")
        unset = [a for a, t in signature.items() if t == "constexpr" and a not in constexprs]
        if unset:
            raise ValueError(f"constexpr arguments without a value: {unset}")
        options = {"num_warps": spec.get("num_warps", 4), **spec.get("options", {})}
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v output: registers and spills
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then the script fails
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return False, f"FAIL {name}: {detail}"
    seconds = time.perf_counter() - t0
    usage = ptxas_usage(log.getvalue(), compiled.metadata.name)
    if not usage and "cubin" in compiled.asm:
        usage = cuobjdump_usage(compiled.asm["cubin"], compiled.metadata.name)
    if "spill_stores" in usage:
        spills = f"spill={usage['spill_stores']}/{usage['spill_loads']} B st/ld stack={usage.get('stack', '?')} B"
    else:
        spills = f"stack+local={usage.get('stack', '?')} B"
    shared = compiled.metadata.shared
    limit = MAX_SHARED_PER_BLOCK.get(arch)
    ok = limit is None or shared <= limit
    status = "ok  " if ok else "FAIL"
    over = "" if ok else f" > sm_{arch} limit {limit} B: cannot launch"
    return ok, (f"{status} {name}: shared={shared} B{over} regs={usage.get('regs', '?')} {spills} "
                f"warps={compiled.metadata.num_warps} ({seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS),
                        help="CUDA compute capabilities to target (default: 80 90)")
    parser.add_argument("-k", dest="pattern", default=None,
                        help="only variants whose description contains this substring")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compile processes (default: all cores)")
    parser.add_argument("--use-cache", action="store_true",
                        help="reuse Triton's kernel cache (default: compile afresh in a temporary cache)")
    args = parser.parse_args(argv)

    tmp_cache = None
    if not args.use_cache:
        tmp_cache = tempfile.mkdtemp(prefix="triton-aot-cache-")
        os.environ["TRITON_CACHE_DIR"] = tmp_cache  # inherited by the worker processes
    try:
        entries, problems = collect_specs(args.pattern)
        for p in problems:
            print(f"FAIL {p}")
        if not entries:
            print("FAIL no AOT_SPECS entries found" + (f" matching {args.pattern!r}" if args.pattern else ""))
            return 1
        jobs = [(modname, i, arch) for modname, i, _ in entries for arch in args.arch]
        t0 = time.perf_counter()
        n_fail = len(problems)
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for ok, line in pool.map(compile_one, *zip(*jobs)):
                print(line, flush=True)
                n_fail += not ok
        print(f"{len(jobs) - (n_fail - len(problems))}/{len(jobs)} compiled for sm_{', sm_'.join(map(str, args.arch))}"
              f" in {time.perf_counter() - t0:.0f} s; {n_fail} failure(s)")
        return 1 if n_fail else 0
    finally:
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compile the Triton kernels of ``surf_accel.triton_kernels`` ahead of time for real GPUs, without a
GPU (docs/design.md 8): each variant the launchers produce is compiled as Triton's JIT would compile it,
and the script reports what it costs on chip.

Kernel modules declare their variants with a module-level ``aot_specs()`` returning dicts (built by
``surf_accel.triton_kernels.launch.aot_spec`` from the launcher's own arguments at real shapes, on
meta tensors):

    kernel      the @triton.jit function
    args        {argument name: value} for every argument: tensors (meta tensors stand for CUDA
                allocations, which are aligned like address 0), ints, floats, constexpr values
    num_warps   as the launcher passes it
    options     further compile options the launcher passes (num_stages)
    label       a short description of the variant
    dtype       the element type, for the report
    main        True: the variant runs on the default path (it must not spill)

Each argument is specialised by Triton's own rule (``native_specialize_impl``, as the JIT's binder
calls it): an int equal to 1 becomes a constant, an int divisible by 16 and a pointer aligned to 16
bytes get ``tt.divisibility=16`` (vectorised loads, cheaper address arithmetic), ints take i32 or
i64 by value. Without those hints the compiled code is not the code that runs.

Any top-level ``@triton.jit`` function whose name ends in ``_kernel`` must appear in its module's
``aot_specs()``; the script fails otherwise, so a new kernel cannot be left out unnoticed.

Prints one line per variant and target with shared memory per block (bytes, from the compiled
metadata; over the architecture's per-block opt-in limit counts as a failure: the kernel could not
launch) and, per thread, registers, spill stores/loads and stack frame (bytes, from ptxas -v; with
--use-cache and a cache hit, from cuobjdump's resource usage). Exits non-zero on any failure,
including a main-path variant that spills. ``--out`` writes the table as markdown.

Run it WITHOUT ``TRITON_INTERPRET=1``: the interpreter replaces @triton.jit functions with Python
ones that cannot be compiled.

    python scripts/check_triton_aot.py [--arch 80 90] [-k SUBSTRING] [-j JOBS] [--use-cache] [--out FILE]
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
import dataclasses
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
from pathlib import Path

DEFAULT_ARCHS = (80, 90)
# Largest shared memory one block may use (opt-in), bytes, per compute capability (CUDA
# programming guide, "Technical Specifications per Compute Capability"). A kernel compiled past
# it builds but cannot launch (Triton raises OutOfResources), so it counts as a failure here.
MAX_SHARED_PER_BLOCK = {
    70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376,
    90: 232448, 100: 232448, 103: 232448, 120: 101376,
}
PACKAGE = "surf_accel.triton_kernels"


def module_specs(module) -> list[dict]:
    specs_fn = getattr(module, "aot_specs", None)
    return list(specs_fn()) if specs_fn is not None else []


def jit_signature(kernel, args: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of ``kernel`` called with ``args``, as Triton's JIT builds them
    (runtime/jit.py: ``create_function_from_signature`` and ``JITFunction._pack_args``)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    missing = [p.name for p in kernel.params if p.name not in args]
    if missing:
        raise ValueError(f"args lack kernel arguments {missing}")
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = args[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[(i,)] = "constexpr", value
            continue
        ty, key = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                         not param.do_not_specialize_on_alignment)
        annotation = param.annotation_type
        if annotation:  # an annotated argument keeps its type; floats and bools are never specialised
            ty, key = annotation, (None if annotation == "u1" or annotation[:2] in ("fp", "bf") else key)
        signature[param.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = value
        elif isinstance(key, str):
            attrs[(i,)] = BaseBackend.parse_attr(key)
    return signature, constexprs, attrs


def collect_specs(pattern: str | None) -> tuple[list[tuple[str, int, dict]], list[str]]:
    """All (module name, index in its aot_specs(), spec) entries, and problems found while collecting."""
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
            problems.append(f"{modname}: aot_specs() failed\n{traceback.format_exc()}")
            continue
        kernels = {
            name for name, obj in vars(module).items()
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel")
            and obj.fn.__module__ == module.__name__
        }
        covered = {spec["kernel"].__name__ for spec in specs}
        for name in sorted(kernels - covered):
            problems.append(f"{modname}.{name}: a kernel with no entry in aot_specs()")
        for i, spec in enumerate(specs):
            if pattern is None or pattern in describe(info.name, spec):
                entries.append((modname, i, spec))
    return entries, problems


def describe(short_module: str, spec: dict) -> str:
    label = f" [{spec['label']}]" if spec.get("label") else ""
    return f"{short_module}.{spec['kernel'].__name__}{label} {spec['dtype']}"


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


@dataclasses.dataclass
class Result:
    name: str
    label: str
    dtype: str
    main: bool
    arch: int
    error: str | None = None
    shared: int | None = None
    usage: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def spills(self) -> bool:
        return bool(self.usage.get("spill_stores") or self.usage.get("spill_loads"))

    @property
    def problem(self) -> str | None:
        """Why this variant fails the check, or None."""
        if self.error is not None:
            return self.error
        limit = MAX_SHARED_PER_BLOCK.get(self.arch)
        if limit is not None and self.shared > limit:
            return f"shared {self.shared} B > sm_{self.arch} per-block limit {limit} B: cannot launch"
        if self.main and self.spills:
            return "a main-path variant spills registers"
        return None

    def line(self) -> str:
        if self.error is not None:
            return f"FAIL {self.name}: {self.error}"
        u = self.usage
        spills = (f"spill={u['spill_stores']}/{u['spill_loads']} B st/ld stack={u.get('stack', '?')} B"
                  if "spill_stores" in u else f"stack+local={u.get('stack', '?')} B")
        status = "FAIL" if self.problem else "ok  "
        why = f" ({self.problem})" if self.problem else ""
        return (f"{status} {self.name}: shared={self.shared} B regs={u.get('regs', '?')} {spills}"
                f"{'' if self.main else ' [not main path]'}{why} ({self.seconds:.1f} s)")


def compile_one(modname: str, index: int, arch: int) -> Result:
    """Compile entry ``index`` of ``modname.aot_specs()`` for sm_``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    module = importlib.import_module(modname)
    spec = module_specs(module)[index]
    result = Result(f"{describe(modname.rsplit('.', 1)[-1], spec)} sm_{arch}", spec["label"], spec["dtype"],
                    spec["main"], arch)
    t0 = time.perf_counter()
    try:
        kernel = spec["kernel"]
        signature, constexprs, attrs = jit_signature(kernel, spec["args"])
        options = {"num_warps": spec.get("num_warps", 4), **spec.get("options", {})}
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v output: registers and spills
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then the script fails
        result.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return result
    result.seconds = time.perf_counter() - t0
    result.usage = ptxas_usage(log.getvalue(), compiled.metadata.name)
    if not result.usage and "cubin" in compiled.asm:
        result.usage = cuobjdump_usage(compiled.asm["cubin"], compiled.metadata.name)
    result.shared = compiled.metadata.shared
    return result


def markdown(results: list[Result], archs: list[int], seconds: float) -> list[str]:
    lines = [f"Compiled for sm_{', sm_'.join(map(str, archs))} with Triton's JIT specialisation of each launch "
             f"(divisibility hints on 16-aligned pointers and ints divisible by 16) in {seconds:.0f} s. Per-block "
             f"shared memory limits (opt-in): " + ", ".join(f"sm_{a} {MAX_SHARED_PER_BLOCK[a]} B" for a in archs
                                                           if a in MAX_SHARED_PER_BLOCK) + ".",
             "", "| kernel | variant | dtype | main path | arch | shared B | regs | spill st/ld B | stack B | "
                 "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        kernel = r.name.split(" [")[0].split(".")[-1]
        u = r.usage
        spill = f"{u.get('spill_stores', '?')}/{u.get('spill_loads', '?')}"
        verdict = "fail: " + r.problem if r.problem else ("spills (not main path)" if r.spills else "ok")
        lines.append(f"| {kernel} | {r.label} | {r.dtype} | {'yes' if r.main else 'no'} | sm_{r.arch} | "
                     f"{r.shared if r.shared is not None else '-'} | {u.get('regs', '-')} | {spill} | "
                     f"{u.get('stack', '-')} | {verdict} |")
    return lines


NOTES = "\n## Notes"


def write_results(path: Path, argv: list[str] | None, table: list[str]) -> None:
    """The table under a provenance header; hand-written notes of an earlier file (from its first
    ``## Notes`` heading on) are kept below it."""
    from triton import __version__ as triton_version

    from surf_accel.bench import record

    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES):].rstrip("\n").splitlines() if NOTES in old else []
    record.write(path, "Triton kernels compiled ahead of time: registers, spills, shared memory",
                 [*record.provenance(argv, f", triton {triton_version}"), "", *table, *notes])


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
    parser.add_argument("--out", default=None, help="write the per-variant table here as markdown")
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
            print("FAIL no aot_specs() entries found" + (f" matching {args.pattern!r}" if args.pattern else ""))
            return 1
        jobs = [(modname, i, arch) for modname, i, _ in entries for arch in args.arch]
        t0 = time.perf_counter()
        results = []
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for result in pool.map(compile_one, *zip(*jobs)):
                print(result.line(), flush=True)
                results.append(result)
        seconds = time.perf_counter() - t0
        n_fail = len(problems) + sum(r.problem is not None for r in results)
        print(f"{sum(r.error is None for r in results)}/{len(jobs)} compiled for sm_{', sm_'.join(map(str, args.arch))}"
              f" in {seconds:.0f} s; {n_fail} failure(s)")
        if args.out:
            write_results(Path(args.out), argv, markdown(results, args.arch, seconds))
        return 1 if n_fail else 0
    finally:
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

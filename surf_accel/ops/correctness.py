"""Correctness on the user's device: every backend that can run here against the fp32 torch reference,
per op and dtype, at real model shapes (``real=True``: the GPU check) or small ones (a CPU smoke test,
the interpreter's Triton included). ``surf-accel info --check`` and ``scripts/gpu_check.sh`` run it.

Real shapes: Wan2.1-14B 720p self-attention (batch 2, 40 heads x 128, 21 x 45 x 80 = 75,600 tokens)
with shifted temporal windows and with a 3D window; HunyuanVideo-style joint attention (720p, 129
frames: 33 x 45 x 80 video tokens, 24 heads x 128, 256 text tokens; one sample's text partly padded,
the other's entirely, padding poisoned with huge values that must never be attended); the fused
latent ops at Wan2.1 720p latents (1, 16, 21, 90, 160), contiguous and as a transposed view.

The reference is the ``torch`` backend (window attention) or ``ops.reference`` (latent ops) in fp32
on the same rounded inputs; the tests hold both to float64 oracles. The error is ``max |out - ref| /
max |ref|``, so a tolerance is a fraction of the output's scale.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from surf_accel.ops import latent_ops, reference, window_reference
from surf_accel.ops.dispatch import BACKENDS, BackendUnavailableError
from surf_accel.ops.window_attention import WINDOW_ATTENTION, window_attention

# Tolerances, as a fraction of max |ref|. Attention: a backend rounds its probabilities to the input
# dtype before P @ V and its output once at the store (each <= half an ulp, relative), accumulating in
# fp32; against fp32 math on the same rounded inputs that is about one ulp of the largest output, so
# two ulps (2 eps) leave margin. fp32: summation orders differ over up to ~40k keys (~1e-6); 1e-4.
# Latent ops: fp32 math rounded once into the output dtype (half an ulp): one ulp; fp32: 1e-5.
# A wrong window, a leaked padded key or an unwritten element errs by O(1) (or inf/NaN).
ATTENTION_TOLERANCE = {torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps,
                       torch.float16: 2 * torch.finfo(torch.float16).eps, torch.float32: 1e-4}
LATENT_TOLERANCE = {torch.bfloat16: torch.finfo(torch.bfloat16).eps,
                    torch.float16: torch.finfo(torch.float16).eps, torch.float32: 1e-5}
# Padded text keys/values hold these: attended even once, they swamp the output (fp16 overflows above 65504).
POISON = {torch.float32: 1e30, torch.bfloat16: 1e30, torch.float16: 3e4}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class AttentionCase:
    name: str
    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    heads: int
    head_dim: int
    batch: int = 2
    num_text: int = 0
    valid_text: tuple[int, ...] | None = None  # valid text tokens per sample (None: no mask)


REAL_ATTENTION = (
    AttentionCase("wan2.1-14b 720p, temporal windows of 4, shift 2", (21, 45, 80), (4, 45, 80), (2, 0, 0), 40, 128),
    AttentionCase("wan2.1-14b 720p, 3D windows 4x16x16, shift 2x8x8", (21, 45, 80), (4, 16, 16), (2, 8, 8), 40, 128),
    AttentionCase("hunyuanvideo 720p joint, temporal windows of 11, shift 5, 256 text (one sample all padding)",
                  (33, 45, 80), (11, 45, 80), (5, 0, 0), 24, 128, num_text=256, valid_text=(200, 0)),
)
SMALL_ATTENTION = (
    AttentionCase("small, temporal windows of 2, shift 1", (5, 6, 8), (2, 6, 8), (1, 0, 0), 2, 32),
    AttentionCase("small, 3D windows 2x3x4, shift 1x1x2", (5, 6, 8), (2, 3, 4), (1, 1, 2), 2, 32),
    AttentionCase("small joint, temporal windows of 2, 8 text (one sample all padding)", (3, 4, 6), (2, 4, 6),
                  (1, 0, 0), 2, 32, num_text=8, valid_text=(5, 0)),
)
REAL_LATENT, SMALL_LATENT = (1, 16, 21, 90, 160), (1, 4, 3, 8, 12)


@dataclass(frozen=True)
class Row:
    op: str
    backend: str
    dtype: str
    tolerance: float
    error: float | None = None  # None: not run (see note)
    auto: bool = False  # the dispatch's automatic choice for this call
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool | None:
        return None if self.error is None else self.error <= self.tolerance


def _auto(op, device: torch.device, dtype: torch.dtype, args=None) -> str | None:
    """The dispatch's choice for the call, or None where there is none (a forced, unusable backend)."""
    try:
        return op.choose(device, dtype, args=args)[0]
    except BackendUnavailableError:
        return None


def _error(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.float() - ref).abs().max()
    return float(diff / ref.abs().max()) if torch.isfinite(out).all() else float("inf")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _attention_inputs(case: AttentionCase, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    s = case.grid[0] * case.grid[1] * case.grid[2] + case.num_text
    qkv = [torch.randn(case.batch, s, case.heads, case.head_dim, generator=gen, device=device).to(dtype)
           for _ in range(3)]
    mask = None
    if case.valid_text is not None:
        mask = torch.arange(case.num_text, device=device)[None] < torch.tensor(case.valid_text, device=device)[:, None]
        n = s - case.num_text
        qkv[1][:, n:][~mask] = POISON[dtype]
        qkv[2][:, n:][~mask] = -POISON[dtype]
    return (*qkv, mask)


def _attention_rows(case: AttentionCase, device: torch.device, dtype: torch.dtype,
                    budget: Callable[[], bool]) -> Iterator[Row]:
    op = f"window_attention {case.name}"
    if budget():  # not even the inputs: the reference alone takes seconds at real shapes
        yield from (Row(op, b, _name(dtype), ATTENTION_TOLERANCE[dtype], note="skipped: time budget spent")
                    for b in BACKENDS if b in WINDOW_ATTENTION.impls)
        return
    gen = torch.Generator(device).manual_seed(0)
    q, k, v, mask = _attention_inputs(case, dtype, device, gen)
    lengths = None if mask is None else tuple(case.valid_text)
    call = (q, k, v, case.grid, case.window, case.shift, case.num_text, mask, lengths)
    auto = _auto(WINDOW_ATTENTION, device, dtype, call)
    ref = window_reference.window_attention_partitioned(q.float(), k.float(), v.float(), case.grid, case.window,
                                                        case.shift, case.num_text, mask)
    for backend in BACKENDS:
        if backend not in WINDOW_ATTENTION.impls:
            continue
        reason = WINDOW_ATTENTION.reason_unusable(backend, device, dtype, call)
        note = "the reference, in fp32" if backend == "torch" and dtype == torch.float32 else ""
        yield _measure(op, backend, dtype, ATTENTION_TOLERANCE[dtype], backend == auto, reason, budget, note,
                       lambda b=backend: window_attention(q, k, v, case.grid, case.window, case.shift,
                                                          num_text=case.num_text, text_mask=mask,
                                                          text_lengths=lengths, backend=b),
                       ref, device)


def _latent_rows(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                 budget: Callable[[], bool]) -> Iterator[Row]:
    gen = torch.Generator(device).manual_seed(1)
    b, c, t, h, w = shape
    low = (b, c, t, h // 2, w // 2)

    def r(size, transposed=False):
        if transposed:  # the same values' memory with H and W swapped: every stride a runtime value
            return torch.randn(*size[:3], size[4], size[3], generator=gen, device=device).to(dtype).transpose(-1, -2)
        return torch.randn(size, generator=gen, device=device).to(dtype)

    for layout in ("contiguous", "strided"):
        strided = layout == "strided"
        lat, mo, vu, lat_lo = r(shape, strided), r(shape, strided), r(shape, strided), r(low, strided)
        noise_lo, noise_hi = r(low), r(shape)
        # name: (public op, reference, arguments after the tensors); the reference runs on fp32 copies.
        cases = {
            "reshift_downsample x2": (latent_ops.reshift_downsample, reference.reshift_downsample,
                                      (lat, mo, noise_lo), (0.6, 0.7, 2)),
            "upsample_mix x2 bilinear": (latent_ops.upsample_mix, reference.upsample_mix, (lat_lo, noise_hi),
                                         (0.5, 2, "bilinear")),
            "guided_step cfg": (latent_ops.guided_step, reference.guided_step, (lat, mo, vu), (5.0, 0.6, 0.55)),
        }
        for name, (fn, ref_fn, tensors, rest) in cases.items():
            op = latent_ops.OPS[name.split()[0]]
            auto = _auto(op, device, dtype)
            ref = ref_fn(*(x.float() for x in tensors), *rest)
            for backend in BACKENDS:
                if backend not in op.impls:
                    continue
                yield _measure(f"{name} {shape} {layout}", backend, dtype, LATENT_TOLERANCE[dtype], backend == auto,
                               op.reason_unusable(backend, device, dtype), budget, "",
                               lambda f=fn, t=tensors, a=rest, be=backend: f(*t, *a, backend=be), ref, device)


def _measure(op: str, backend: str, dtype: torch.dtype, tolerance: float, auto: bool, reason: str | None,
             over_budget: Callable[[], bool], note: str, fn: Callable[[], torch.Tensor], ref: torch.Tensor,
             device: torch.device) -> Row:
    row = Row(op, backend, _name(dtype), tolerance, auto=auto)
    if reason is not None:
        return dataclasses.replace(row, note=f"unavailable: {reason}")
    if over_budget():
        return dataclasses.replace(row, note="skipped: time budget spent")
    t0 = time.perf_counter()
    try:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        err = _error(out, ref)
    except Exception as exc:  # noqa: BLE001 - a failing backend is a result of the check, not its end
        _free(device)
        return dataclasses.replace(row, seconds=time.perf_counter() - t0,
                                   note=f"raised {type(exc).__name__}: {str(exc)[:200]}")
    return dataclasses.replace(row, error=err, seconds=time.perf_counter() - t0, note=note)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(device: torch.device | str, real: bool, budget_s: float = float("inf"),
        on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Every (op, backend, dtype) row for ``device``; ``real`` picks the model shapes, else small ones.
    Rows that would start after ``budget_s`` seconds are reported as skipped; ``on_row`` sees each row
    as it is measured (to write results as they come)."""
    device = torch.device(device)
    started = time.perf_counter()

    def over_budget() -> bool:
        return time.perf_counter() - started > budget_s

    rows = []
    for dtype in DTYPES:
        for case in REAL_ATTENTION if real else SMALL_ATTENTION:
            rows += _collect(_attention_rows(case, device, dtype, over_budget), on_row, device)
        rows += _collect(_latent_rows(REAL_LATENT if real else SMALL_LATENT, device, dtype, over_budget), on_row,
                         device)
    return rows


def _collect(rows: Iterator[Row], on_row: Callable[[Row], None] | None, device: torch.device) -> list[Row]:
    """Drain one case's rows (its inputs and reference live as long as the generator), then free them."""
    out = []
    with contextlib.closing(rows):
        for row in rows:
            out.append(row)
            if on_row is not None:
                on_row(row)
    _free(device)
    return out


TABLE_HEADER = ["| op | backend | dtype | auto | max error / max ref | tolerance | result | s | note |",
                "|---|---|---|---|---|---|---|---|---|"]


def table_row(r: Row) -> str:
    result = {True: "pass", False: "FAIL", None: "-"}[r.passed]
    err = "-" if r.error is None else f"{r.error:.2e}"
    return (f"| {r.op} | {r.backend} | {r.dtype} | {'yes' if r.auto else ''} | {err} | {r.tolerance:.1e} | "
            f"{result} | {r.seconds:.2f} | {r.note} |")


def table(rows: list[Row]) -> list[str]:
    """Markdown: one row per op x backend x dtype."""
    return [*TABLE_HEADER, *map(table_row, rows)]


def summary(rows: list[Row]) -> str:
    ran = [r for r in rows if r.passed is not None]
    failed = [r for r in rows if r.passed is False or r.note.startswith("raised")]
    skipped = sum(r.note.startswith("skipped") for r in rows)
    return f"{len(ran) - sum(r.passed is False for r in ran)}/{len(ran)} rows within tolerance, " \
           f"{len(failed)} failed or raised, {skipped} skipped for time"


def failed(rows: list[Row]) -> bool:
    return any(r.passed is False or r.note.startswith("raised") for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--real", action="store_true", help="real model shapes (default: on CUDA; small shapes on CPU)")
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds after which rows are skipped")
    p.add_argument("--out", default=None, help="write the table here as markdown, row by row")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    real = args.real or device.type == "cuda"
    header = [f"# Correctness on {device} ({'real' if real else 'small'} shapes) vs the fp32 torch reference", "",
              "Error: max |out - ref| / max |ref|; tolerances per dtype are justified in "
              "surf_accel/ops/correctness.py.", ""]
    done: list[Row] = []

    def write(row: Row) -> None:
        done.append(row)
        print(table_row(row), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(header + table(done)) + "\n")

    rows = run(device, real, args.budget, write)
    print(summary(rows))
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n{summary(rows)}\n")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

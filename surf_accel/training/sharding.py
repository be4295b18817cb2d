"""Sharded refiner training (``train.strategy: fsdp``) on torch's FSDP2 (``fully_shard``).

Each diffusers ``WanTransformerBlock`` is one FSDP unit and the transformer's root holds the rest
(patch embedding, condition embedders, output head). Every parameter is a DTensor sharded along
dim 0 over the processes (``torch.chunk`` rows: process ``r`` of ``W`` holds rows
``[r * ceil(n / W), (r + 1) * ceil(n / W))`` of an ``n``-row parameter, clipped to ``n``, possibly
none); a unit's parameters are all-gathered just before its forward (and again before its backward)
and freed after. AdamW's ``exp_avg`` and ``exp_avg_sq`` are DTensors of the same sharding and the
EMA's shadow is the same rows of each parameter, so a process holds about ``1 / W`` of the
parameters, of the Adam states and of the EMA.

Precision with ``train.mixed_precision: bf16``: the sharded master weights stay float32; each unit's
parameters are gathered and cast to bf16 for compute (``MixedPrecisionPolicy(param_dtype=bf16)``;
that includes the parameters diffusers keeps in float32 at inference, which the modules that compute
in float32 upcast again), the forward runs under the same ``torch.autocast`` as DDP, and the
gradients of the bf16 backward are cast to float32 before the reduce-scatter
(``reduce_dtype=float32``), so the sum over processes, the accumulation over micro-batches, AdamW's
states and the EMA are all float32. fp16 is refused (a sharded gradient scaler is not wired in).

Checkpoints (also of ``ddp`` runs, as one whole "shard" of one process, written by the main process):
every process writes its own rows into ``{model,optimizer,ema}-rankR-of-W.safetensors``
(``optimizer``: ``exp_avg/<name>``, ``exp_avg_sq/<name>`` and ``step/<name>``). Each file's
safetensors metadata holds ``format``, ``rank``, ``world_size`` and ``index``: a JSON object
``{name: [global shape, row offset]}`` (offset ``null``: the whole tensor, the same on every
process, as AdamW's ``step``). ``assemble`` puts the full tensors back together in one process.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
import torch.distributed as dist
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from safetensors import safe_open
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from surf_accel import files
from surf_accel.training.ema import EMA

FORMAT = "surf_accel.sharded/1"
KINDS = ("model", "optimizer", "ema")
_SHARD_FILE = re.compile(r"(model|optimizer|ema)-rank(\d+)-of-(\d+)\.safetensors")


def shard_file(kind: str, rank: int, world_size: int) -> str:
    return f"{kind}-rank{rank:05d}-of-{world_size:05d}.safetensors"


@dataclass
class Sharded:
    """The transformer and its optimiser as one process holds them: sharded over ``world_size``
    processes (``fsdp``), or whole (``ddp``: ``rank`` 0 of ``world_size`` 1, the files written by the
    main process alone, ``writes``, and read by every process)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    rank: int
    world_size: int
    writes: bool = True


def ensure_process_group(device: torch.device) -> None:
    """A one-process group (gloo on CPU, nccl on CUDA) where the run was not launched by torchrun or
    accelerate: ``fully_shard`` needs one, and the checkpoint is then the layout of one process."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


def mixed_precision_policy(mixed_precision: str) -> MixedPrecisionPolicy:
    """``"bf16"``: parameters gathered in bf16, gradients reduced in float32; ``"no"``: float32 throughout."""
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if mixed_precision == "no":
        return MixedPrecisionPolicy()
    raise ValueError(f"sharded training takes mixed_precision 'no' or 'bf16', not {mixed_precision!r}")


def shard_model(model: torch.nn.Module, device: torch.device, mixed_precision: str) -> torch.nn.Module:
    """``model`` sharded in place over all processes: one FSDP unit per ``WanTransformerBlock``, then the root."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision_policy(mixed_precision)
    blocks = [m for m in model.modules() if isinstance(m, WanTransformerBlock)]
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no WanTransformerBlock to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's rows of a sharded tensor; a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def local_tensors(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: local(t) for n, t in named.items()}


def _row_offset(t: DTensor) -> int:
    """The first global row of this process's rows of ``t`` (``RuntimeError`` for another sharding)."""
    if tuple(t.placements) != (Shard(0),):
        raise RuntimeError(f"expected a tensor sharded along dim 0, got placements {t.placements}")
    world, rank = t.device_mesh.size(), t.device_mesh.get_local_rank()
    n = t.shape[0]
    chunk = math.ceil(n / world)
    start, stop = min(rank * chunk, n), min((rank + 1) * chunk, n)
    if t.to_local().shape[0] != stop - start:
        raise RuntimeError(f"process {rank} holds {t.to_local().shape[0]} rows of a {n}-row tensor, "
                           f"expected {stop - start}")
    return start


def like(local_rows: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``local_rows`` as a tensor sharded like ``param`` (a DTensor), or as it is (``param`` plain)."""
    if not isinstance(param, DTensor):
        return local_rows
    return DTensor.from_local(local_rows, param.device_mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


def save_shards(path: str | Path, tensors: Mapping[str, torch.Tensor], rank: int, world_size: int) -> Path:
    """This process's rows of ``tensors`` (DTensors sharded along dim 0, or plain tensors that every
    process holds whole) as one safetensors file with the index in its metadata."""
    rows, index = {}, {}
    for n, t in tensors.items():
        rows[n] = local(t)
        index[n] = [list(t.shape), _row_offset(t) if isinstance(t, DTensor) else None]
    meta = {"format": FORMAT, "rank": str(rank), "world_size": str(world_size), "index": json.dumps(index)}
    return files.write_safetensors(path, rows, meta)


def read_shards(path: str | Path, rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """The tensors of this process's shard file and its index; ``ValueError`` when it was written by
    another rank or world size."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a surf_accel shard file")
        if (int(meta["rank"]), int(meta["world_size"])) != (rank, world_size):
            raise ValueError(f"{path} holds rank {meta['rank']} of {meta['world_size']}, "
                             f"expected rank {rank} of {world_size}")
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta["index"])


@torch.no_grad()
def copy_rows(dst: Mapping[str, torch.Tensor], src: Mapping[str, torch.Tensor], where: str) -> None:
    """``src``'s tensors into this process's rows of ``dst``'s (same names, same local shapes)."""
    if set(dst) != set(src):
        missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
        raise ValueError(f"{where} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for n, t in dst.items():
        rows = local(t)
        if rows.shape != src[n].shape:
            raise ValueError(f"{where}: {n} has shape {tuple(src[n].shape)} here, {tuple(rows.shape)} expected")
        rows.copy_(src[n])


def optimizer_tensors(sharded: Sharded, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as ``"<state key>/<parameter name>"`` tensors."""
    params = dict(sharded.model.named_parameters())
    out = {}
    for n in names:
        for k, v in sharded.opt.state.get(params[n], {}).items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer state {k!r} of {n} is not a tensor")
            out[f"{k}/{n}"] = v
    return out


def load_optimizer(sharded: Sharded, names: Iterable[str], saved: Mapping[str, torch.Tensor],
                   index: Mapping[str, list], where: str) -> None:
    """Replace the optimiser's state of the parameters ``names`` by ``saved`` (``optimizer_tensors``'
    names, this process's rows; ``index`` as ``read_shards`` returns it): the sharded states as
    DTensors like their parameter, the whole ones (``step``) as plain tensors."""
    params = dict(sharded.model.named_parameters())
    state: dict[torch.Tensor, dict] = {}
    for key, rows in saved.items():
        k, _, n = key.partition("/")
        if n not in params:
            raise ValueError(f"{where}: optimizer state for {n!r}, which the model does not have")
        p = params[n]
        whole = index[key][1] is None
        expected = torch.Size(index[key][0]) if whole else local(p).shape
        if rows.shape != expected:
            raise ValueError(f"{where}: {key} has shape {tuple(rows.shape)}, {tuple(expected)} expected")
        rows = rows.clone() if whole else like(rows.to(local(p).device, local(p).dtype), p)
        state.setdefault(p, {})[k] = rows
    unknown = {p for p in state} - {params[n] for n in names}
    if unknown:
        raise ValueError(f"{where} holds optimizer state of parameters that do not train")
    sharded.opt.state.clear()
    sharded.opt.state.update(state)


def gather(tensors: Mapping[str, torch.Tensor], main: bool) -> Optional[dict[str, torch.Tensor]]:
    """The full tensors (on the CPU) on the main process, ``None`` elsewhere: a collective, one tensor at
    a time (every process must call it with the same names in the same order)."""
    out = {}
    for n, t in tensors.items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if main:
            out[n] = full.detach().cpu()
    return out if main else None


def shard_files(folder: str | Path) -> dict[str, dict[int, Path]]:
    """``{kind: {rank: path}}`` of the shard files in a checkpoint folder."""
    out: dict[str, dict[int, Path]] = {}
    for p in Path(folder).iterdir():
        m = _SHARD_FILE.fullmatch(p.name)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = p
    return out


def layout_problem(folder: str | Path) -> Optional[str]:
    """What is missing or foreign among a checkpoint's shard files (every process's file for the model
    and the optimiser, and for the EMA where it has one, all of one world size), or ``None`` (also for a
    checkpoint without shard files)."""
    names = [m for m in map(_SHARD_FILE.fullmatch, sorted(p.name for p in Path(folder).iterdir())) if m]
    if not names:
        return None
    worlds = sorted({int(m.group(3)) for m in names})
    if len(worlds) > 1:
        return f"{folder} holds shard files of runs of {' and '.join(map(str, worlds))} processes"
    world, found = worlds[0], shard_files(folder)
    for kind in KINDS:
        if kind == "ema" and kind not in found:
            continue
        missing = sorted(set(range(world)) - set(found.get(kind, {})))
        if missing:
            return f"{Path(folder) / shard_file(kind, missing[0], world)} is missing"
    return None


def assemble(folder: str | Path, kind: str) -> dict[str, torch.Tensor]:
    """The full tensors of one kind (``"model"``, ``"optimizer"``, ``"ema"``) from the shard files of
    every process, in one process; ``ValueError`` naming the file where rows are missing, overlap or
    disagree."""
    by_rank = shard_files(folder).get(kind, {})
    if not by_rank:
        raise FileNotFoundError(f"no {kind} shard files in {folder}")
    pieces: dict[str, list[tuple[Optional[int], torch.Tensor, Path]]] = {}
    shapes: dict[str, list[int]] = {}
    world = None
    for rank, path in sorted(by_rank.items()):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or int(meta["rank"]) != rank:
                raise ValueError(f"{path} is not the shard file of rank {rank}")
            world = int(meta["world_size"]) if world is None else world
            if int(meta["world_size"]) != world:
                raise ValueError(f"{path} is one of {meta['world_size']} shards, the others of {world}")
            for n, (shape, offset) in json.loads(meta["index"]).items():
                if shapes.setdefault(n, shape) != shape:
                    raise ValueError(f"{path}: {n} has global shape {shape}, another shard says {shapes[n]}")
                pieces.setdefault(n, []).append((offset, f.get_tensor(n), path))
    if sorted(by_rank) != list(range(world)):
        raise ValueError(f"{folder} holds {kind} shards of ranks {sorted(by_rank)} of {world}")
    out = {}
    for n, parts in pieces.items():
        if parts[0][0] is None:  # the whole tensor in every file
            out[n] = parts[0][1]
            continue
        parts.sort(key=lambda x: x[0])
        row = 0
        for offset, t, path in parts:
            if offset != row or list(t.shape[1:]) != shapes[n][1:]:
                raise ValueError(f"{path}: {n}'s rows start at {offset} with shape {list(t.shape)}, expected row "
                                 f"{row} of {shapes[n]}")
            row += t.shape[0]
        if row != shapes[n][0]:
            raise ValueError(f"{folder}: the shards of {n} hold {row} of its {shapes[n][0]} rows")
        out[n] = torch.cat([t for _, t, _ in parts])
    return out


def ema_tensors(model: torch.nn.Module, ema: EMA) -> dict[str, torch.Tensor]:
    """The EMA's shadow (this process's rows) as tensors sharded like ``model``'s parameters."""
    params = dict(model.named_parameters())
    return {n: like(v, params[n]) for n, v in ema.shadow.items()}


def _trainable(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def save(folder: str | Path, sharded: Sharded, ema: Optional[EMA]) -> None:
    """This process's shard files of the model, the optimiser and (where the run keeps one) the EMA
    (none where it does not ``write``)."""
    folder, r, w = Path(folder), sharded.rank, sharded.world_size
    if not sharded.writes:
        return
    folder.mkdir(parents=True, exist_ok=True)
    save_shards(folder / shard_file("model", r, w), sharded.model.state_dict(), r, w)
    save_shards(folder / shard_file("optimizer", r, w), optimizer_tensors(sharded, _trainable(sharded.model)), r, w)
    if ema is not None:
        save_shards(folder / shard_file("ema", r, w), ema_tensors(sharded.model, ema), r, w)


def load(folder: str | Path, sharded: Sharded, ema: Optional[EMA]) -> None:
    """This process's rows of the model, the optimiser's state and the EMA from its shard files."""
    folder, r, w = Path(folder), sharded.rank, sharded.world_size
    path = folder / shard_file("model", r, w)
    copy_rows(sharded.model.state_dict(), read_shards(path, r, w)[0], str(path))
    path = folder / shard_file("optimizer", r, w)
    load_optimizer(sharded, _trainable(sharded.model), *read_shards(path, r, w), str(path))
    if ema is not None:
        path = folder / shard_file("ema", r, w)
        ema.load_tensors(read_shards(path, r, w)[0], str(path))

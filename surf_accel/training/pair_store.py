"""Training pairs on disk: shards made by every process for its own share, read lazily while training.

A store is a folder ``<cache_dir>/<name>-<key digest>`` of shards ``shard-00000.safetensors``, ...: shard
``j`` holds pairs ``j * shard_size`` up to ``(j + 1) * shard_size`` of the store, as tensors

- ``z_hr``, ``z_lr``: ``(n, C, T, h, w)`` float32 latents (``pairs.make_pairs`` / ``base_pairs``);
- ``degradation``: ``(n, 4)`` float32 (clip pairs only), ``hr``: ``(n, 3, F, H, W)`` (validation only);
- ``text_index``: ``(n,)`` int64, pair -> caption of this shard; ``text.<u>``: caption ``u``'s embedding
  ``(tokens, D)`` in the text encoder's dtype, cut after its last token: WanPipeline pads every
  embedding with exact zeros to ``max_sequence_length``, so padding it back on reading is lossless
  and a shard stores a caption's real length only, once however many of its pairs use it;

and in its metadata the store's key digest, the recipe, the pair range and the process that made it.
Shard ``j`` is made by process ``j mod processes`` and written atomically (``surf_accel.files``): a
shard that reads back with the store's key is finished and never redone after a restart. Each process
then waits for the others' shards on the file system (``wait``); when every shard is there the main
process writes ``store.json`` (the shard list and counts).

Reading: ``PairDataset`` opens the shard of the pair it is asked for (``safe_open``) and reads that
pair's slices only, cut to the phase's latent frames, so a training process holds a few micro-batches
of pairs whatever the number of clips. ``MicroBatches`` orders the pairs: epoch ``e`` is a permutation
of all pairs (across and within shards) seeded by ``(seed, e)``, consumed ``batch_size x processes``
at a time, so the micro-batches of step ``k`` are a function of the step (a resumed run reads on from
the middle of its epoch exactly as the uninterrupted one did).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from surf_accel import files

STORE_INDEX = "store.json"


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]


def trim_text(embedding: torch.Tensor) -> torch.Tensor:
    """``(L, D)`` padded embedding -> its rows up to the last non-zero one (at least one row)."""
    used = embedding.abs().amax(dim=-1).nonzero()
    n = int(used.max()) + 1 if used.numel() else 1
    return embedding[:n].contiguous()


def pad_text(embedding: torch.Tensor, length: int) -> torch.Tensor:
    """``(tokens, D)`` -> ``(length, D)`` float32, zeros after the tokens (as WanPipeline pads)."""
    out = embedding.new_zeros(length, embedding.shape[-1], dtype=torch.float32)
    out[:embedding.shape[0]] = embedding.float()
    return out


class PairStore:
    """The shards of one store (``folder``) of ``count`` pairs, ``shard_size`` a shard, made with ``key``."""

    def __init__(self, folder: str | os.PathLike, key: dict, count: int, shard_size: int):
        if count < 0 or shard_size < 1:
            raise ValueError(f"a store of {count} pairs in shards of {shard_size}")
        self.folder, self.count, self.shard_size = Path(folder), int(count), int(shard_size)
        self.key = _digest(key)

    @classmethod
    def under(cls, cache_dir: str | os.PathLike, name: str, key: dict, count: int, shard_size: int) -> "PairStore":
        """The store ``name`` for ``key`` in ``cache_dir`` (its folder named by the key's digest)."""
        return cls(Path(cache_dir) / f"{name}-{_digest(key)}", key, count, shard_size)

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def span(self, j: int) -> tuple[int, int]:
        return j * self.shard_size, min(self.count, (j + 1) * self.shard_size)

    def shard_path(self, j: int) -> Path:
        return self.folder / f"shard-{j:05d}.safetensors"

    def shard_done(self, j: int) -> bool:
        """Whether shard ``j`` reads back as this store's (its key and pair range in its metadata)."""
        path = self.shard_path(j)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001  (a truncated or foreign file: made again)
            return False
        return meta.get("key") == self.key and meta.get("span") == json.dumps(list(self.span(j)))

    def make(self, make_shard: Callable[[int, int], tuple[dict[str, torch.Tensor], list[str]]],
             encode_text: Callable[[list[str]], torch.Tensor], recipe: dict, *, rank: int = 0, processes: int = 1,
             progress: bool = False) -> list[int]:
        """Make this process's missing shards: for shard ``j`` with ``j mod processes == rank``,
        ``make_shard(start, stop)`` gives its pair tensors and their captions, ``encode_text(captions)``
        the ``(U, L, D)`` padded embeddings of the shard's distinct captions. The shards made (finished
        ones are skipped)."""
        todo = [j for j in range(rank, self.num_shards, processes) if not self.shard_done(j)]
        made = []
        for j in tqdm(todo, desc=self.folder.name, disable=not progress):
            start, stop = self.span(j)
            tensors, captions = make_shard(start, stop)
            if len(captions) != stop - start or any(t.shape[0] != stop - start for t in tensors.values()):
                raise ValueError(f"shard {j} of {self.folder}: expected {stop - start} pairs")
            distinct = sorted(set(captions))
            where = {c: u for u, c in enumerate(distinct)}
            text = encode_text(distinct)
            out = dict(tensors)
            out["text_index"] = torch.tensor([where[c] for c in captions], dtype=torch.int64)
            out.update({f"text.{u}": trim_text(text[u]) for u in range(len(distinct))})
            meta = {"key": self.key, "span": json.dumps([start, stop]), "recipe": json.dumps(recipe, default=list),
                    "captions": json.dumps(distinct), "made_by": str(rank), "processes": str(processes)}
            files.write_safetensors(self.shard_path(j), {k: v.contiguous() for k, v in out.items()}, meta)
            made.append(j)
        return made

    def wait(self, poll_seconds: float = 5.0) -> None:
        """Return once every shard is made (by whichever process): a file-system wait, not a collective,
        so that making the shares may take longer than the process group's timeout."""
        while not all(self.shard_done(j) for j in range(self.num_shards)):
            time.sleep(poll_seconds)

    def finish(self, recipe: dict) -> Path:
        """Write ``store.json`` (main process, after every shard is made); ``RuntimeError`` naming a missing shard."""
        missing = [j for j in range(self.num_shards) if not self.shard_done(j)]
        if missing:
            raise RuntimeError(f"{self.folder}: shard {missing[0]} of {self.num_shards} is missing or incomplete")
        return files.write_json(self.folder / STORE_INDEX, {
            "key": self.key, "count": self.count, "shard_size": self.shard_size, "recipe": recipe,
            "shards": [{"file": self.shard_path(j).name, "pairs": list(self.span(j))} for j in range(self.num_shards)],
            "bytes": sum(self.shard_path(j).stat().st_size for j in range(self.num_shards))}, indent=1)

    def read_all(self, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """Every pair in memory (a small store: validation): the shards' tensors concatenated, ``text``
        ``(N, max_sequence_length, D)`` float32 (each pair's caption, padded)."""
        parts: dict[str, list[torch.Tensor]] = {}
        texts = []
        for j in range(self.num_shards):
            with safe_open(str(self.shard_path(j)), "pt") as f:
                names = [k for k in f.keys() if not k.startswith("text")]
                for k in names:
                    parts.setdefault(k, []).append(f.get_tensor(k))
                index = f.get_tensor("text_index")
                table = {u: pad_text(f.get_tensor(f"text.{u}"), max_sequence_length) for u in set(index.tolist())}
                texts += [table[int(u)] for u in index]
        out = {k: torch.cat(v) for k, v in parts.items()}
        out["text"] = torch.stack(texts) if texts else torch.zeros(0)
        return out


class PairDataset(torch.utils.data.Dataset):
    """The pairs of several stores as one sequence; item ``(i, frames)`` = ``(z_hr, z_lr, text)`` of pair
    ``i``: latents ``(C, frames, h, w)`` float32, text ``(max_sequence_length, D)`` float32. Each read
    opens the pair's shard and reads only its slices."""

    def __init__(self, stores: Sequence[PairStore], max_sequence_length: int):
        self.shards: list[tuple[Path, int]] = []  # (file, first pair of the dataset in it)
        n = 0
        for s in stores:
            for j in range(s.num_shards):
                self.shards.append((s.shard_path(j), n))
                n += s.span(j)[1] - s.span(j)[0]
        self.length, self.max_sequence_length = n, int(max_sequence_length)
        self._starts = [first for _, first in self.shards]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, frames = item
        if not 0 <= i < self.length:
            raise IndexError(f"pair {i} of {self.length}")
        j = bisect.bisect_right(self._starts, i) - 1
        path, first = self.shards[j]
        k = i - first
        with safe_open(str(path), "pt") as f:
            z_hr = f.get_slice("z_hr")[k:k + 1, :, :frames][0]
            z_lr = f.get_slice("z_lr")[k:k + 1, :, :frames][0]
            u = int(f.get_slice("text_index")[k:k + 1][0])
            text = pad_text(f.get_tensor(f"text.{u}"), self.max_sequence_length)
        return z_hr, z_lr, text


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2 ** 62))
    return torch.randperm(n, generator=g)


class MicroBatches(torch.utils.data.Sampler):
    """This process's micro-batches from optimiser step ``start_step`` to the end of ``phases`` (each a
    ``(steps, batch_size, latent_frames)``): lists of ``(pair, latent_frames)``. The run draws pairs in
    epochs (see the module docstring); micro-batch ``m`` of step ``k`` takes, of the run's next
    ``batch_size x processes`` draws, the ``rank``-th ``batch_size``."""

    def __init__(self, n: int, seed: int, phases: Sequence[tuple[int, int, int]], grad_accum: int, processes: int,
                 rank: int, start_step: int = 0):
        if n < 1:
            raise ValueError("no training pairs")
        self.n, self.seed, self.phases = n, seed, [tuple(map(int, p)) for p in phases]
        self.grad_accum, self.processes, self.rank, self.start_step = grad_accum, processes, rank, start_step

    def _steps(self) -> Iterator[tuple[int, int, int]]:
        """``(step, batch_size, latent_frames)`` of every step of the run."""
        step = 0
        for steps, batch, frames in self.phases:
            for _ in range(steps):
                yield step, batch, frames
                step += 1

    def __len__(self) -> int:
        return max(0, sum(p[0] for p in self.phases) - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        drawn = 0  # pairs the whole run drew before the current micro-batch
        orders: dict[int, torch.Tensor] = {}

        def pair(position: int) -> int:
            epoch = position // self.n
            if epoch not in orders:
                orders.clear()  # positions only move forward
                orders[epoch] = _epoch_order(self.n, self.seed, epoch)
            return int(orders[epoch][position % self.n])

        for step, batch, frames in self._steps():
            for _ in range(self.grad_accum):
                if step >= self.start_step:
                    first = drawn + self.rank * batch
                    yield [(pair(p), frames) for p in range(first, first + batch)]
                drawn += batch * self.processes


def _stack(items):
    return tuple(torch.stack(parts) for parts in zip(*items))


def loader(dataset: PairDataset, batches: MicroBatches, workers: int) -> torch.utils.data.DataLoader:
    """The micro-batches ``(z_hr, z_lr, text)`` of ``batches`` in order, read by ``workers`` processes
    (0: in this process)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_stack,
                                       prefetch_factor=2 if workers else None, persistent_workers=False)


__all__ = ["MicroBatches", "PairDataset", "PairStore", "loader", "pad_text", "trim_text"]

"""Exponential moving average of the trainable parameters, kept in float32 (saved with the checkpoint's
shard files, ``sharding``).

``decay_at(step) = min(decay, (1 + step) / (10 + step))``: a short warm-up so the average is not
dominated by the random initialisation during the first few hundred steps. It averages the tensors
it is given: under DDP the whole parameters (every process holds the same copy, the main process
writes it); under FSDP each process's rows of them (``sharding.local``), so every process keeps and
writes the average of its own shard and nothing is gathered until the export.
"""

from __future__ import annotations

from typing import Iterable

import torch


class EMA:
    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = float(decay)
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], step: int) -> None:
        d = self.decay_at(step)
        for n, p in named_params:
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model) -> None:
        """Write the averages into ``model``'s parameters of the same names (others untouched)."""
        params = dict(model.named_parameters())
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise KeyError(f"EMA parameters not in the model: {missing[:3]}")
        for n, v in self.shadow.items():
            params[n].copy_(v.to(params[n].dtype))

    @torch.no_grad()
    def load_tensors(self, state: dict[str, torch.Tensor], where: str) -> None:
        """The averages from ``state`` (the same names and shapes as the shadow; ``where`` names the source)."""
        if set(state) != set(self.shadow):
            raise ValueError(f"EMA checkpoint {where} holds other parameters than this model trains")
        for n, v in state.items():
            if v.shape != self.shadow[n].shape:
                raise ValueError(f"EMA checkpoint {where}: {n} has shape {tuple(v.shape)}, "
                                 f"{tuple(self.shadow[n].shape)} expected")
            self.shadow[n].copy_(v)

"""Exponential moving average of the trainable parameters, kept in float32 and saved as safetensors.

``decay_at(step) = min(decay, (1 + step) / (10 + step))``: a short warm-up so the average is not
dominated by the random initialisation during the first few hundred steps. Every process holds the
same copy (DDP keeps the parameters identical); only the main process writes it.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
from safetensors.torch import load_file

from surf_accel import files


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

    def save(self, path: str | os.PathLike) -> None:
        files.write_safetensors(path, self.shadow, {"decay": str(self.decay)})

    def load(self, path: str | os.PathLike) -> None:
        state = load_file(str(path))
        if set(state) != set(self.shadow):
            raise ValueError(f"EMA checkpoint {path} holds other parameters than this model trains")
        for n, v in state.items():
            self.shadow[n].copy_(v)

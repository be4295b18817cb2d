"""The refiner's objective (docs/design.md 1.3): flow matching on the straight path from ``z_hr`` to ``z_lr``.

``x_s = (1 - s) z_hr + s z_lr``, target velocity ``v = z_lr - z_hr``; the transformer is called as
the runner calls a trained refiner: ``timestep = s * num_train_timesteps`` (the base scheduler's
1000), the caption's embeddings as ``encoder_hidden_states`` (one pass, no guidance). Inference
starts at ``s = 1`` from ``z_lr`` and takes Euler steps ``x <- x + (s' - s) v`` to ``s = 0``.
Latents are ``(B, C, T, H, W)`` float32 throughout.
"""

from __future__ import annotations

import torch

from surf_accel.training.config import ObjectiveConfig


def sample_s(n: int, cfg: ObjectiveConfig, num_steps: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` path positions in (0, 1] from ``cfg.s_distribution`` (float32, CPU)."""
    if cfg.s_distribution == "uniform":
        return 1.0 - torch.rand(n, generator=gen)  # (0, 1]: s = 1 is inference's first step
    if cfg.s_distribution == "logit_normal":
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
    k = torch.randint(0, num_steps, (n,), generator=gen)
    return 1.0 - k.float() / num_steps  # inference's Euler levels 1, 1 - 1/n, ..., 1/n


def degrade_latent(z_lr: torch.Tensor, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Latent-level degradation: ``z_lr + std * eps`` with one ``std`` per sample ``(B,)``."""
    return z_lr + std.view(-1, 1, 1, 1, 1) * torch.randn(z_lr.shape, generator=gen)


def straight_path(z_hr: torch.Tensor, z_lr: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_s, target)`` for per-sample ``s`` ``(B,)``."""
    sv = s.view(-1, 1, 1, 1, 1).to(z_hr.dtype)
    return (1 - sv) * z_hr + sv * z_lr, z_lr - z_hr


def predict(model, x: torch.Tensor, s: torch.Tensor, text: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The refiner's velocity for ``x`` at ``s`` (as ``integrations.wan.WanAdapter.predict`` calls it)."""
    dtype = next(model.parameters()).dtype
    return model(hidden_states=x.to(dtype), timestep=(s * num_train_timesteps).to(x.device),
                 encoder_hidden_states=text.to(dtype), return_dict=False)[0]


def flow_loss(model, z_hr: torch.Tensor, z_lr: torch.Tensor, text: torch.Tensor, s: torch.Tensor,
              num_train_timesteps: int) -> torch.Tensor:
    """Mean squared error of the predicted velocity against ``z_lr - z_hr`` (float32)."""
    x, target = straight_path(z_hr, z_lr, s)
    pred = predict(model, x, s, text, num_train_timesteps)
    return (pred.float() - target.float()).pow(2).mean()


@torch.no_grad()
def euler_refine(model, z_lr: torch.Tensor, text: torch.Tensor, num_steps: int, num_train_timesteps: int) -> torch.Tensor:
    """Inference's trained-refiner stage: ``num_steps`` Euler steps from ``s = 1`` (``z_lr``) to 0 on
    ``linspace(1, 0, num_steps + 1)`` (the planner's grid), float32 latents."""
    sig = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).tolist()
    x = z_lr.float()
    for i in range(num_steps):
        s = torch.full((x.shape[0],), float(sig[i]), dtype=torch.float32, device=x.device)
        v = predict(model, x, s, text, num_train_timesteps).float()
        x = x + (sig[i + 1] - sig[i]) * v
    return x

"""Shared set-up of the stacking tests: tiny pipelines, a SURF plan with stages long enough for a
cache to skip (4 steps each), call recorders independent of the code under test."""

from __future__ import annotations

import numpy as np
import torch

from surf_accel import SurfConfig
from tests.tiny_pipelines import HY_KW, T2V_KW, hunyuan_embeds

# preview 4 steps at 32 px, preview_low 4 at 16 px, refine 4 at 64 px (the request)
STAGED = SurfConfig(optimal_size=(32, 32), preview_steps=8, switch_step=4, refine_steps=4, handoff="latent")
STAGE_STEPS = (("preview", 4), ("preview_low", 4), ("refine", 4))
WAN_KW = dict(T2V_KW, height=64, width=64, num_inference_steps=8)  # CFG: cond + uncond per step
HY_CALL = dict(HY_KW, height=64, width=64, num_inference_steps=8, prompt=None,
               **hunyuan_embeds(), **hunyuan_embeds(negative=True))  # one pass per step
HY_CFG = dict(HY_CALL, true_cfg_scale=3.0)  # true CFG: a second pass


def frames(pipe, kw, seed=0):
    return pipe(generator=torch.Generator().manual_seed(seed), **kw).frames


def assert_equal(a, b):
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"max diff {np.abs(np.asarray(a) - np.asarray(b)).max()}"


class Calls:
    """Counts forward calls of a module (pre-hook), so a test sees which calls computed."""

    def __init__(self, module):
        self.n = 0
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, m, args):
        self.n += 1

    def remove(self):
        self._h.remove()

"""The stage protocol (surf_accel/stages.py): what SURF's adapters pass to
cache_context per stage, recorded by a diffusers StateManager-holding hook of the test's own."""

import pytest
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

import surf_accel
from surf_accel.integrations.accelerators import current_step
from tests.integrations.accelerators.common import HY_CFG, STAGE_STEPS, STAGED, WAN_KW, frames
from tests.tiny_pipelines import tiny_hunyuan_t2v, tiny_wan_t2v


class _State:
    def reset(self):
        pass


class _Recorder(ModelHook):
    """Records each call's cache context, like a cache hook reads it."""

    _is_stateful = True

    def __init__(self):
        super().__init__()
        self.manager = StateManager(_State)
        self.seen = []

    def pre_forward(self, module, *args, **kwargs):
        c = self.manager.context
        width = float(kwargs["hidden_states"].shape[-1])
        self.seen.append((c.name, c.step_index, c.num_inference_steps, c.sigma, width))
        return args, kwargs

    def reset_state(self, module):
        self.seen.append("reset")
        return module


@pytest.mark.parametrize("make, kw", [(tiny_wan_t2v, WAN_KW), (tiny_hunyuan_t2v, HY_CFG)])
def test_each_stage_passes_its_own_step_index_count_and_sigma(make, kw):
    pipe = make()
    rec = _Recorder()
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(rec, "test_recorder")
    surf_accel.patch(pipe, STAGED)
    plan = surf_accel.api.plan_for(pipe, height=64, width=64, num_frames=5, num_inference_steps=8)
    frames(pipe, kw)
    assert current_step(pipe.transformer) is None  # nothing left on the model after the call
    want = []
    for stage, (name, n) in zip(plan.stages, STAGE_STEPS):
        assert (stage.name, stage.steps) == (name, n)
        want.append("reset")
        for i in range(n):
            for b in ("cond", "uncond"):
                want.append((b, i, n, pytest.approx(stage.sigmas[i]), float(stage.latent_size[2])))
        want.append("reset")
    got = [s for s in rec.seen]
    # the pipeline's own end-of-call reset (maybe_free_model_hooks) follows the last stage
    assert got[:len(want)] == want and set(got[len(want):]) <= {"reset"}

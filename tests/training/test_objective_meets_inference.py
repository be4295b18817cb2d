"""Training's objective tied to inference: a refiner that predicts exactly the objective's target velocity
(``objective.straight_path``), run by SURF's own runner as a trained refiner, lands on ``z_hr``. A sign or
endpoint error in the objective (a target of ``z_hr - z_lr``, or the path's ends swapped) would train
every refiner to walk away from the video it should reach, and fails here."""

import pytest
import torch

import surf_accel
from surf_accel.api import plan_for
from surf_accel import SurfConfig
from surf_accel.refiner import Refiner
from surf_accel.training import objective
from tests.tiny_pipelines import T2V_KW, gen, tiny_transformer, tiny_wan_t2v

KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, handoff="latent")


@pytest.mark.parametrize("num_steps", [1, 3, 7])
def test_a_refiner_predicting_the_objectives_target_reaches_z_hr(num_steps):
    pipe = tiny_wan_t2v()
    plan = plan_for(pipe, height=64, width=64, num_frames=9, num_inference_steps=4, config=CFG,
                               refiner=Refiner(tiny_transformer(), num_steps=num_steps))
    refine = plan.stages[-1]
    assert refine.model == "trained_refiner" and refine.steps == num_steps
    z_hr = torch.randn((1, 16) + tuple(refine.latent_size), generator=gen(5))
    seen: dict = {}

    def oracle(hidden_states, timestep, encoder_hidden_states, **kw):
        """The objective's target for the pair (z_hr, z_lr), z_lr being what the refine starts from (s = 1)."""
        s = timestep.float() / pipe.scheduler.config.num_train_timesteps
        if "z_lr" not in seen:
            assert torch.allclose(s, torch.ones_like(s))
            seen["z_lr"] = hidden_states.float().clone()
        x, target = objective.straight_path(z_hr, seen["z_lr"], s)
        torch.testing.assert_close(hidden_states.float(), x, rtol=1e-5, atol=1e-5)  # inference is on the path
        return (target,)

    model = tiny_transformer()
    model.forward = oracle
    with surf_accel.patched(pipe, CFG, refiner=Refiner(model, num_steps=num_steps)):
        out = pipe(generator=gen(0), **KW).frames
    assert "z_lr" in seen and (seen["z_lr"] - z_hr).abs().max() > 0.5  # the refine had somewhere to go
    torch.testing.assert_close(out.float(), z_hr, rtol=1e-5, atol=1e-5)


def test_a_refiner_overfit_on_one_pair_refines_its_z_lr_to_its_z_hr():
    """Training and inference from the other side: a tiny refiner trained by ``flow_loss`` on one pair
    (300 Adam steps on inference's four Euler levels), then run by ``euler_refine`` from that pair's
    ``z_lr``, ends within 10% of ``|z_lr - z_hr|`` of ``z_hr`` (it reaches 4% here). A flipped target
    sign walks away from ``z_hr`` (error above 100%); a timestep or path position that training and
    inference disagree on leaves the refine at the wrong point of the path."""
    from surf_accel.training.config import ObjectiveConfig

    g = gen(0)
    z_hr = torch.randn(1, 16, 2, 8, 8, generator=g)
    # the "preview": z_hr with its 2 x 2 detail averaged away, and shifted
    z_lr = torch.nn.functional.avg_pool3d(z_hr, (1, 2, 2)).repeat_interleave(2, -1).repeat_interleave(2, -2) + 0.3
    text = torch.randn(1, 4, 32, generator=g)
    model = tiny_transformer(num_layers=1, ffn_dim=256, head_dim=16).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    grid = ObjectiveConfig(s_distribution="inference_grid")
    for _ in range(300):
        s = objective.sample_s(4, grid, 4, g)
        loss = objective.flow_loss(model, z_hr.expand(4, -1, -1, -1, -1), z_lr.expand(4, -1, -1, -1, -1),
                                   text.expand(4, -1, -1), s, 1000)
        opt.zero_grad()
        loss.backward()
        opt.step()
    refined = objective.euler_refine(model.eval(), z_lr, text, 4, 1000)
    assert (refined - z_hr).norm() < 0.1 * (z_lr - z_hr).norm()


def test_training_calls_the_refiner_with_inferences_timesteps():
    """``objective.predict`` (what training and validation call) passes the refiner the timestep the
    runner passes at the same path position: a refine of 4 steps visits s = 1, 3/4, 1/2, 1/4, and
    training at those s must show the model the same timesteps (a training timestep left in [0, 1], or
    scaled by another constant, would train a refiner for calls it never gets)."""
    pipe = tiny_wan_t2v()
    seen = []

    def record(hidden_states, timestep, encoder_hidden_states, **kw):
        seen.append(timestep.float().clone())
        return (torch.zeros_like(hidden_states),)

    model = tiny_transformer()
    model.forward = record
    with surf_accel.patched(pipe, CFG, refiner=Refiner(model, num_steps=4)):
        pipe(generator=gen(0), **KW)
    runner = [float(t[0]) for t in seen[-4:]]
    seen.clear()
    x = torch.zeros(1, 16, 3, 8, 8)
    for s in (1.0, 0.75, 0.5, 0.25):
        objective.predict(model, x, torch.tensor([s]), torch.zeros(1, 4, 32), 1000)
    assert [float(t[0]) for t in seen] == pytest.approx(runner, abs=1e-3)

"""The EMA against a hand recursion in float64: ``shadow <- d_k shadow + (1 - d_k) p_k`` with the
warm-up ``d_k = min(decay, (1 + k) / (10 + k))``; it starts at the initial weights, writes its averages
into a model's parameters of the same names and refuses a state of other parameters or shapes."""

import pytest
import torch

from surf_accel.training.ema import EMA


def test_ema_follows_the_warmed_up_recursion():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = EMA([("w", w)], decay=0.9)
    want = [1.0, -2.0]
    for k, value in enumerate([3.0, 5.0, -1.0, 0.5] + [2.0] * 40):
        with torch.no_grad():
            w.fill_(value)
        ema.update([("w", w)], k)
        d = min(0.9, (1 + k) / (10 + k))  # 0.1, 0.18, ... then capped at 0.9
        want = [d * x + (1 - d) * value for x in want]
        assert ema.shadow["w"].tolist() == pytest.approx(want, rel=1e-6)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9


def test_copy_to_and_load_tensors():
    model = torch.nn.Linear(2, 3)
    ema = EMA(model.named_parameters(), decay=0.99)
    ema.load_tensors({"weight": torch.ones(3, 2), "bias": torch.full((3,), 2.0)}, "here")
    ema.copy_to(model)
    assert torch.equal(model.weight, torch.ones(3, 2)) and torch.equal(model.bias, torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="other parameters"):
        ema.load_tensors({"weight": torch.ones(3, 2)}, "here")
    with pytest.raises(ValueError, match="shape"):
        ema.load_tensors({"weight": torch.ones(2, 3), "bias": torch.ones(3)}, "here")

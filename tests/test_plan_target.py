"""``plan_for_target`` / ``surf-accel plan`` against the cost model's own estimates, recomputed here for
each combination the planner may choose."""

import pytest

from surf_accel import cli
from surf_accel.catalogue import estimate
from surf_accel.config import SurfConfig
from surf_accel.plan_target import plan_for_target

SKIPS = {"preview": 0.33, "preview_low": 0.53}  # the toy's TeaCache 0.15 (benchmarks/results/stacking.md)


def speedup(preset, window=None, cache=False, **refine) -> float:
    """Wan2.1-14B 720p, 81 frames, 50 steps: the baseline's FLOPs over SURF's, a cached stage's
    transformer FLOPs scaled by its calls that run."""
    est = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig.preset(preset).replace(window=window), **refine)
    surf = sum((s.linear + s.attention) * (1 - (SKIPS.get(s.name, 0) if cache else 0)) for s in est.surf)
    return est.baseline_total / (surf + sum(est.surf_vae.values()))


def test_a_reachable_target_takes_no_approximation():
    plan = plan_for_target("wan2.1-14b", 720, 1280, 3)
    assert plan.approximations == () and plan.refine == "base" and plan.window is None and plan.cache is None
    assert plan.speedup == pytest.approx(max(speedup("paper"), speedup("quality")))


def test_ten_x_takes_the_fastest_two_approximation_plan_when_one_is_not_enough():
    plan = plan_for_target("wan2.1-14b", 720, 1280, 10)
    one = [speedup("fast"), speedup("paper", (4, 1000, 1000)), speedup("paper", cache=True),
           speedup("paper", refiner_transformer="wan2.1-1.3b"), speedup("quality", refiner_transformer="wan2.1-1.3b")]
    assert max(one) < 10  # nothing with one approximation reaches it
    assert len(plan.approximations) == 2 and plan.speedup >= 10
    two = speedup("paper", cache=True, refiner_transformer="wan2.1-1.3b")
    assert plan.refine == "transformer:wan2.1-1.3b" and plan.cache == "teacache:0.15"
    assert plan.speedup == pytest.approx(two)
    assert two > speedup("paper", (4, 1000, 1000), refiner_transformer="wan2.1-1.3b")  # the tie goes to the fastest


def test_an_unreachable_target_names_the_fastest_plan():
    fastest = speedup("fast", (4, 1000, 1000), cache=True, refiner_transformer="wan2.1-1.3b")
    with pytest.raises(ValueError, match=f"(?s)no plan is predicted to reach 40x.*{fastest:.2f}x") as e:
        plan_for_target("wan2.1-14b", 720, 1280, 40)
    assert "without a trained refiner" in str(e.value)
    with pytest.raises(ValueError, match="above 1"):
        plan_for_target("wan2.1-14b", 720, 1280, 1)
    with pytest.raises(ValueError, match="unknown model"):
        plan_for_target("wan3", 720, 1280, 5)


def test_trained_refiners_are_considered_only_when_asked():
    """22x is out of reach training-free (21.56x at most) and within reach of a trained 1.3B-sized refiner."""
    with pytest.raises(ValueError, match="without a trained refiner"):
        plan_for_target("wan2.1-14b", 720, 1280, 22)
    trained = plan_for_target("wan2.1-14b", 720, 1280, 22, trained=True)
    assert trained.refine == "trained:wan2.1-1.3b" and any("train-refiner" in n for n in trained.notes)
    assert trained.speedup == pytest.approx(speedup(trained.preset, trained.window, trained.cache is not None,
                                                    refiner="wan2.1-1.3b")) and trained.speedup >= 22


def test_plan_cli(capsys):
    assert cli.main(["plan", "--model", "wan2.1-14b", "--height", "720", "--width", "1280", "--target", "10"]) == 0
    out = capsys.readouterr().out
    assert "wan2.1-1.3b (training-free)" in out and "teacache:0.15" in out and "skip fractions assumed" in out
    assert cli.main(["plan", "--height", "720", "--width", "1280", "--target", "40"]) == 2
    assert "the fastest" in capsys.readouterr().err

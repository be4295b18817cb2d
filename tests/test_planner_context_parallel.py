"""Plans under diffusers' context parallelism (``plan_stages(cp_degree=...)``, ``estimate --cp N``):
every stage's video tokens must split into equal shards. Token counts here are worked by hand from
Wan2.1's geometry (VAE 8x spatial, 4x temporal, patch (1, 2, 2): 81 frames -> 21 latent frames, one
token per 16x16 pixels per latent frame), not read from the planner."""

import pytest

from surf_accel import cli
from surf_accel.catalogue import estimate, family_defaults
from surf_accel.config import SurfConfig
from surf_accel.planner import Request, plan_stages

WAN = family_defaults()["wan2.1"]
PAPER = SurfConfig.preset("paper")


def wan_tokens(height: int, width: int, frames: int = 81) -> int:
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def plan(height=720, width=1280, config=PAPER, cp_degree=1, **kw):
    return plan_stages(Request(height, width, 81, 50), WAN.family, WAN.scheduler, config, cp_degree=cp_degree, **kw)


@pytest.mark.parametrize("degree", [1, 2])
def test_a_plan_that_splits_is_unchanged(degree):
    # 720p: preview 480x832 (32,760 tokens), preview_low 240x416 (8,190), refine 75,600: all even
    assert wan_tokens(240, 416) == 8190 and wan_tokens(240, 416) % 2 == 0
    assert plan(cp_degree=degree) == plan()


@pytest.mark.parametrize("degree, preview", [(4, (448, 832)), (8, (512, 832))])
def test_the_low_resolution_stage_snaps_to_the_nearest_size_that_splits(degree, preview):
    """The real case: 8,190 low-resolution tokens (21 x 15 x 26) do not split over 4 or 8 ranks."""
    assert wan_tokens(240, 416) % degree
    p = plan(cp_degree=degree)
    pre, low, ref = p.stages
    assert (pre.height, pre.width) == preview
    assert (low.height, low.width) == (preview[0] // 2, preview[1] // 2)
    # one latent patch (16 px at the low size) along one axis
    assert abs(low.height - 240) + abs(low.width - 416) == 16
    for s in p.stages:
        assert wan_tokens(s.height, s.width) % degree == 0
    assert (ref.height, ref.width) == (720, 1280)
    msg = p.messages[-1]
    assert f"over {degree} ranks" in msg and "preview_low" in msg and "8190" in msg
    assert f"{preview[0]}x{preview[1]}" in msg


def test_a_request_that_cannot_split_is_refused_naming_the_stage_and_sizes_that_split():
    assert wan_tokens(720, 1264) == 74655 and 74655 % 8
    with pytest.raises(ValueError) as e:
        plan(720, 1264, cp_degree=8)
    msg = str(e.value)
    for word in ("refine stage", "720x1264", "74655", "degree 8", "21 x 45 x 79"):
        assert word in msg
    sizes = msg.split("that split: ")[1].split(" (")[0].split(", ")
    assert sizes[0] == "720x1280" and len(sizes) == 3
    for size in sizes:
        h, w = map(int, size.split("x"))
        assert wan_tokens(h, w) % 8 == 0
        plan(h, w, cp_degree=8)


def test_an_explicit_optimal_size_is_refused_not_moved():
    with pytest.raises(ValueError, match=r"preview_low stage at 240x416 px has 8190 tokens.*nearest optimal_size"):
        plan(config=PAPER.replace(optimal_size=(480, 832)), cp_degree=8)


def test_the_identity_plan_is_refused_at_the_request_size():
    with pytest.raises(ValueError, match=r"the preview stage at 720x1264 px .* degree 2.*height x width"):
        plan(720, 1264, config=SurfConfig.identity(), cp_degree=2)


def test_each_stage_model_has_its_own_degree():
    """A refine by another transformer splits over that one's ranks only."""
    kw = dict(refiner_transformer=True)
    assert plan(720, 1264, cp_degree={"base": 8}, **kw).stages[-1].height == 720
    with pytest.raises(ValueError, match="refine stage"):
        plan(720, 1264, cp_degree={"refiner_transformer": 8}, **kw)


@pytest.mark.parametrize("bad", [0, True, 2.0, {"base": 0}])
def test_a_bad_degree_is_refused(bad):
    with pytest.raises(ValueError, match="cp_degree"):
        plan(cp_degree=bad)


def test_estimate_and_cli_plan_for_context_parallel(capsys):
    est = estimate("wan2.1-14b", 720, 1280, 81, cp_degree=8)
    assert [(s.height, s.width) for s in est.plan.stages] == [(512, 832), (256, 416), (720, 1280)]
    assert cli.main(["estimate", "--model", "wan2.1-14b", "--height", "720", "--width", "1280", "--cp", "8"]) == 0
    out = capsys.readouterr().out
    assert "256x416 px" in out and "per GPU under Ulysses context parallelism over 8 GPUs" in out
    assert cli.main(["estimate", "--model", "wan2.1-14b", "--height", "720", "--width", "1264", "--cp", "8"]) == 2
    assert "720x1280" in capsys.readouterr().err


def test_the_per_gpu_view_splits_compute_and_counts_ulysses_traffic():
    est = estimate("wan2.1-14b", 720, 1280, 81, cp_degree=8)
    rows = {line.split()[0]: line.split() for line in est.per_gpu_table(8).splitlines()[2:]}
    refine = next(s for s in est.surf if s.name == "refine")
    tokens, steps = wan_tokens(720, 1280), refine.steps * refine.passes_per_step
    # Wan2.1-14B: 40 blocks of width 5120; q, k, v and the output, bf16, 7/8 of each shard leaves the GPU
    per_layer = 4 * tokens / 8 * 5120 * 2 * 7 / 8
    assert rows["refine"][1] == str(tokens // 8)
    assert float(rows["refine"][2]) == pytest.approx(refine.total / 8 / 1e12, abs=0.01)
    assert float(rows["refine"][3]) == pytest.approx(per_layer / 1e6, abs=0.1)
    assert float(rows["refine"][5]) == pytest.approx(per_layer * 40 * steps / 1e9, abs=0.1)
    assert float(rows["refine"][6]) == pytest.approx(per_layer * 40 * steps / 450e9, abs=0.01)

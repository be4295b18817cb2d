"""``surf-accel bench`` (surf_accel/bench/stacking.py) on the shipped toy model, one prompt and seed.
Oracles: TeaCache's published rule (a threshold never reached computes exactly each call's or
stage's first and last step per branch; a threshold of 0 computes every call, so its videos are the
reference row's), the SURF plan's step counts written out, and the cost model's stage costs."""

import json

import pytest

from surf_accel import SurfConfig
from surf_accel.bench.stacking import predict
from surf_accel.cli import main
from surf_accel.catalogue import estimate
from surf_accel.toyworld import pipeline_available

pytestmark = pytest.mark.skipif(not pipeline_available(), reason="toy pipeline not shipped")

STEPS = 13  # the toy setting: 3 steps at 64 px, then 10 at 32 px (switch_fraction 0.24); the trained refiner


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "seed0.json"
    assert main(["bench", "--steps", str(STEPS), "--prompt-stride", "32", "--cache", "teacache:0", "teacache:1e9",
                 "--sparse-preview", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_rows_and_the_teacache_rule(shard):
    rows = shard["rows"]
    assert shard["order"] == ["base 128 px", "SURF", "teacache:0 alone", "teacache:1e9 alone", "SURF + teacache:0",
                              "SURF + teacache:1e9"]
    assert shard["prompts"] == 1 and all(r["n"] == 1 for r in rows.values())
    calls = {"call": 2 * STEPS}  # cond + uncond per step
    surf_calls = {"preview": 2 * 3, "preview_low": 2 * 10}  # the trained refiner is another model: not counted
    # threshold 0: every call computes, and the videos are the reference row's
    for name, ref, want in (("teacache:0 alone", "base 128 px", calls), ("SURF + teacache:0", "SURF", surf_calls)):
        assert rows[name]["calls"] == want and rows[name]["computed"] == want
        assert rows[name]["reference"] == ref and rows[name]["distance"] == [0.0]
    # never reached: the first step (retention 1 for the temb indicator) and the last, per branch
    assert rows["teacache:1e9 alone"]["calls"] == calls
    assert rows["teacache:1e9 alone"]["computed"] == {"call": 2 * 2}
    assert rows["SURF + teacache:1e9"]["calls"] == surf_calls
    assert rows["SURF + teacache:1e9"]["computed"] == {"preview": 2 * 2, "preview_low": 2 * 2}
    assert rows["SURF"]["calls"] == surf_calls and rows["base 128 px"]["calls"] == calls


def test_table_and_predictions(shard, tmp_path):
    part = tmp_path / "seed0.json"
    part.write_text(json.dumps(shard))
    out = tmp_path / "stacking.md"
    assert main(["bench", "--combine", str(part), "--out", str(out)]) == 0
    text = out.read_text()
    alone = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig.preset("paper"), refiner="wan2.1-1.3b").speedup
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["SURF + teacache:0"].split(" | ")[1] == f"{alone:.2f}x"  # nothing skipped: SURF's prediction
    assert lines["teacache:0 alone"].split(" | ")[1] == "1.00x"
    assert "command: `surf-accel bench --combine" in text and "1 prompts x seeds [0] = 1 videos per row" in text


def test_predict_scales_each_stage_by_its_skips():
    est = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig.preset("paper"), refiner="wan2.1-1.3b")
    stage = {s.name: s.total for s in est.surf}
    vae = sum(est.surf_vae.values())
    assert set(stage) == {"preview", "preview_low", "refine"}
    want = est.baseline_total / (0.5 * stage["preview"] + 0.25 * stage["preview_low"] + stage["refine"] + vae)
    assert predict({"preview": 0.5, "preview_low": 0.75}, 720, 1280, True, False) == pytest.approx(want, rel=1e-12)
    base = sum(s.total for s in est.baseline)
    want = est.baseline_total / (0.6 * base + sum(est.baseline_vae.values()))
    assert predict({"call": 0.4}, 720, 1280, False, False) == pytest.approx(want, rel=1e-12)
    # the sparse preview counts fewer preview FLOPs than dense: a larger prediction at the same skips
    assert predict({}, 720, 1280, True, True) > predict({}, 720, 1280, True, False) == pytest.approx(est.speedup)


@pytest.mark.parametrize("argv, msg", [(["--cache", "magcache"], "MagCache needs mag_ratios"),
                                       (["--cache", "teacache:x"], "threshold must be a number"),
                                       (["--sparse-preview", "1", "2"], "takes 7 numbers")])
def test_bad_input_is_refused_before_any_row_runs(argv, msg, tmp_path, capsys):
    assert main(["bench", "--json", str(tmp_path / "x.json"), *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()

"""Pairs made by the base model (``surf_accel.training.base_pairs``) against the hand replay of SURF
(``tests/surf_replay.py``): ``z_lr`` must be the preview's final latents through the pair config's
handoff, ``z_hr`` the training-free SURF output of the same prompt and seed. A pair taken at the
wrong step, with the wrong seed or prompt, or handed off by the SURF config instead of the pair
config, misses the replay by far more than float32 rounding."""

import json

import torch
import torch.nn.functional as F

from surf_accel import SurfConfig
from surf_accel.integrations.wan import WanAdapter
from surf_accel.training.base_pairs import make_base_pairs
from surf_accel.training.config import PairsConfig
from tests import surf_replay as sr
from tests.test_surf_replay import ATOL, BASE, HW, RECIPE
from tests.tiny_pipelines import tiny_wan_t2v

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [3, 11]


def test_base_pairs_are_the_preview_and_the_training_free_output():
    pipe = tiny_wan_t2v("euler")
    surf = SurfConfig(**BASE, handoff="latent", latent_resize="bilinear")
    # z_lr follows the pair config's handoff (nearest), not the SURF config's (bilinear)
    pairs_cfg = PairsConfig(preview_height=32, preview_width=32, handoff="latent", latent_resize="nearest")
    got = make_base_pairs(pipe, WanAdapter(), surf, PROMPTS, SEEDS, num_frames=5, num_inference_steps=6,
                          guidance_scale=4.0, pairs_cfg=pairs_cfg, **HW)
    assert got["z_lr"].shape == got["z_hr"].shape == (2, 16, 2, 8, 8)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        pe, ne = pipe.encode_prompt(prompt, do_classifier_free_guidance=True, max_sequence_length=512)
        cond = dict(prompt_embeds=pe, negative_prompt_embeds=ne)
        kw = dict(num_frames=5, num_steps=6, guidance=4.0, cond=cond, **HW)
        preview = sr.replay(pipe, sr.WAN, sr.Recipe(**{**RECIPE, "refine_steps": 0}),
                            generator=torch.Generator().manual_seed(seed), **kw)
        want_lr = F.interpolate(preview, size=(2, 8, 8), mode="nearest")
        want_hr = sr.replay(pipe, sr.WAN, sr.Recipe(**RECIPE, handoff="latent"),
                            generator=torch.Generator().manual_seed(seed), **kw)
        for name, want in (("z_lr", want_lr), ("z_hr", want_hr)):
            err = (got[name][i] - want[0]).abs().max().item()
            assert err < ATOL, f"pair {i} {name}: max |made - replay| = {err:.3g}"


def test_training_data_appends_the_base_pairs_with_their_captions(tmp_path):
    """``prepare_data`` with ``base_pairs.num = 3``: the clip pairs, then 3 base pairs made from the
    training captions 0, 1, 2 with seeds 500, 501, 502 (the same tensors ``make_base_pairs`` gives),
    each read with its own caption's embedding; a second call makes no shard again."""
    from surf_accel.toyworld import load_pipeline
    from surf_accel.training import config_from_dict
    from surf_accel.training.data import load_sources
    from surf_accel.training.loop import prepare_data
    from surf_accel.training.validate import surf_config_for
    from tests.training.common import tiny_config

    cfg = config_from_dict(tiny_config(tmp_path, base_pairs={"num": 3, "seed": 500, "num_inference_steps": 4},
                                       pairs={"shard_size": 2}))
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    data = prepare_data(cfg, pipe, WanAdapter())
    n = cfg.data.num_clips
    ds = data["train"]
    assert len(ds) == n + 3 and [s.count for s in data["stores"]] == [n, 3]
    captions = load_sources(cfg.data, cfg.seed)[0].captions
    want = make_base_pairs(pipe, WanAdapter(), surf_config_for(cfg, "toy"), captions[:3], [500, 501, 502],
                           height=64, width=64, num_frames=5, num_inference_steps=4, guidance_scale=4.0,
                           pairs_cfg=cfg.pairs)
    for i in range(3):
        z_hr, z_lr, text = ds[(n + i, 2)]
        assert torch.equal(z_hr, want["z_hr"][i]) and torch.equal(z_lr, want["z_lr"][i])
        assert torch.equal(text, ds[(i, 2)][2])  # base pair i's prompt is training caption i
    assert data["val"]["hr"].shape == (2, 3, 5, 64, 64) and data["val"]["text"].shape[:2] == (2, 16)
    shards = sorted(cfg.cache_dir.rglob("shard-*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = prepare_data(cfg, pipe, WanAdapter())
    assert [p.stat().st_mtime_ns for p in shards] == stamps and len(again["train"]) == n + 3
    card = json.loads((data["stores"][0].folder / "data_card.json").read_text())
    assert card["clips"]["train"] == n and card["clips"]["val"] == 2
    assert (data["stores"][0].folder / "DATA_CARD.md").is_file()

"""The toy sibling shipped in surf_accel/toyworld/sibling: a smaller transformer of the toy's family that
refines its preview training-free (TRAINING.md, benchmarks/results/signature_sibling.md)."""

import pytest
import torch

import surf_accel
import surf_accel.toyworld as tw
from surf_accel.metrics import detect_video

pytestmark = pytest.mark.skipif(not (tw.SIBLING_DIR / "config.json").is_file(), reason="no shipped toy sibling")


def test_sibling_is_a_fifth_of_the_base_and_fits_its_interface():
    pipe, sibling = tw.load_pipeline(), tw.load_sibling()
    b, s = pipe.transformer.config, sibling.config
    base_size = b.num_layers * b.num_attention_heads * b.attention_head_dim
    size = s.num_layers * s.num_attention_heads * s.attention_head_dim
    assert base_size / 10 <= size <= base_size / 5  # layers x width: about a fifth to a tenth
    assert sum(p.numel() for p in sibling.parameters()) < sum(p.numel() for p in pipe.transformer.parameters()) / 5
    for key in ("in_channels", "out_channels", "text_dim", "patch_size"):
        assert getattr(s, key) == getattr(b, key)
    assert all(torch.isfinite(p).all() for p in sibling.parameters())


@torch.no_grad()
def test_sibling_refine_keeps_the_previews_colour_and_direction():
    """Through the full SURF path the sibling refines the toy's preview (the base never runs at the
    target size) and the prompt's colour and motion survive."""
    pipe = tw.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    sibling = tw.load_sibling()
    sizes = []
    sibling.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["hidden_states"].shape[-1]), with_kwargs=True)
    with surf_accel.patched(pipe, tw.surf_config(), refiner=sibling):
        for prompt in ("a red square moving left", "a blue circle moving up"):
            video = pipe(prompt=prompt, height=tw.TARGET_SIZE, width=tw.TARGET_SIZE, num_frames=tw.NUM_FRAMES,
                         num_inference_steps=tw.DEFAULT_STEPS, guidance_scale=tw.DEFAULT_GUIDANCE, output_type="np",
                         generator=torch.Generator().manual_seed(0)).frames[0]
            sig = detect_video(video)
            assert (sig.colour, sig.direction) == tuple(prompt.split()[i] for i in (1, -1)), (prompt, sig)
    assert sizes and set(sizes) == {tw.TARGET_SIZE // pipe.vae_scale_factor_spatial}  # the refine only

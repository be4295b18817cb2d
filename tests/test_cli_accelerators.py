"""`surf-accel generate --offload model|sequential|group --compile [regional|full]`."""

import os

import pytest

from surf_accel import cli
from tests.tiny_pipelines import tiny_wan_t2v


def _generate_args(*extra):
    return cli.build_parser().parse_args(["generate", "model", "--prompt", "a", *extra])


def test_flags_parse_with_bare_defaults():
    assert _generate_args().offload is None and _generate_args().compile is None
    assert _generate_args("--offload").offload == "model" and _generate_args("--compile").compile == "regional"
    assert _generate_args("--offload", "group", "--compile", "full").offload == "group"
    with pytest.raises(SystemExit):
        _generate_args("--offload", "disk")


@pytest.mark.parametrize("offload", ["model", "sequential", "group"])
def test_offload_modes_install_diffusers_own_offloading(offload):
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    pipe = tiny_wan_t2v("euler")
    cli._offload_and_compile(pipe, "cpu", offload, None)
    t = pipe.transformer
    if offload == "group":
        assert all(b._diffusers_hook.get_hook(_GROUP_OFFLOADING) is not None for b in t.blocks)
        assert not hasattr(t, "_hf_hook")
    else:
        from accelerate.hooks import CpuOffload, SequentialHook

        assert isinstance(t._hf_hook, CpuOffload if offload == "model" else SequentialHook)
        # model offload hooks whole components; sequential hooks every leaf module too
        assert hasattr(t.blocks[0].attn1.to_q, "_hf_hook") == (offload == "sequential")


@pytest.mark.parametrize("mode", ["regional", "full"])
def test_compile_modes(mode):
    pipe = tiny_wan_t2v("euler")
    cli._offload_and_compile(pipe, "cpu", None, mode)
    t = pipe.transformer
    assert (t._compiled_call_impl is not None) == (mode == "full")
    assert all((b._compiled_call_impl is not None) == (mode == "regional") for b in t.blocks)


def test_generate_with_group_offload(tmp_path, capsys):
    model = tmp_path / "tiny"
    tiny_wan_t2v("euler").save_pretrained(model)
    out = tmp_path / "v.mp4"
    rc = cli.main(["generate", str(model), "--prompt", "a red circle", "--height", "32", "--width", "32",
                   "--frames", "5", "--steps", "4", "--guidance", "3", "--max-sequence-length", "16",
                   "--dtype", "float32", "--device", "cpu", "--output", str(out), "--offload", "group",
                   "--preset", "fast", "--optimal-size", "32", "32", "--preview-steps", "4", "--switch-step", "2",
                   "--refine-steps", "1", "--window", "1", "2", "2"])
    assert rc == 0, capsys.readouterr().err
    assert out.exists() and os.path.getsize(out) > 0


def test_sparse_preview_flag(capsys):
    from surf_accel.integrations.accelerators.sparse_attention import SparsePattern

    args = cli.build_parser().parse_args(["estimate", "--height", "720", "--width", "1280",
                                          "--sparse-preview", "3", "5", "13", "3", "3", "3", "1"])
    assert cli._config_from(args, "paper").preview_attention == SparsePattern((3, 5, 13), (3, 3, 3), 1)
    speedups = []
    for extra in ([], ["--sparse-preview", "3", "5", "13", "3", "3", "3", "1"]):
        assert cli.main(["estimate", "--height", "720", "--width", "1280", *extra]) == 0
        speedups.append(float(capsys.readouterr().out.split("predicted speedup ")[1].split("x")[0]))
    assert speedups[1] > speedups[0]
    # a tile that does not fit the 720p preview grid (21, 30, 52): the fix, not a traceback
    assert cli.main(["estimate", "--height", "720", "--width", "1280", "--sparse-preview", "1", "1", "5", "1", "1",
                     "1", "0"]) == 2
    assert "does not divide the W axis" in capsys.readouterr().err

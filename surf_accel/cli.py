"""``surf-accel``: generate, estimate, plan, info, demo, bench, train-refiner.

    surf-accel generate ./Wan2.1-T2V-1.3B-Diffusers --prompt "a cat" --height 720 --width 1280 \\
        --frames 81 --preset paper --output cat.mp4 [--baseline]
    surf-accel generate ./HunyuanVideo --prompt "a cat" --height 720 --width 1280 --frames 129
    surf-accel estimate --model wan2.1-14b --height 720 --width 1280 --frames 81 --preset paper
    surf-accel estimate --model hunyuanvideo --height 720 --width 1280 --frames 129
    surf-accel plan --model wan2.1-14b --height 720 --width 1280 --target 10
    surf-accel info
    surf-accel bench --seeds 0 1 2 --out stacking.md
    surf-accel train-refiner refiner.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Optional

from surf_accel import files, folder_setting
from surf_accel.bench import demo
from surf_accel.refiner import REFINER_FORMAT
from surf_accel.training.plan import DEFAULT_CAPTION_TOKENS, DEFAULT_MFU, GPUS, plan


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help="SurfConfig preset (paper, fast, quality, identity, hunyuan-paper, hunyuan15-windows; default: "
                        "the model folder's surf_config.json, else the family's: paper for Wan2.1, hunyuan-paper for "
                        "HunyuanVideo)")
    p.add_argument("--switch-step", type=int, default=None, help="override the preset's switch_step")
    p.add_argument("--preview-steps", type=int, default=None, help="override the preset's preview_steps")
    p.add_argument("--refine-steps", type=int, default=None, help="override the preset's refine_steps")
    p.add_argument("--refine-start", type=float, default=None, help="override the preset's refine_start")
    p.add_argument("--handoff", choices=("pixel", "latent"), default=None)
    p.add_argument("--optimal-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--window", type=int, nargs=3, metavar=("WT", "WH", "WW"), default=None,
                   help="shifted-window size in tokens for the refine stage")
    p.add_argument("--refine-expert", choices=("low", "high", "route"), default=None,
                   help="two-expert pipelines (Wan2.2 A14B): the refine's expert (default: the preset's, low)")
    p.add_argument("--sparse-preview", type=int, nargs=7, metavar=("TT", "TH", "TW", "WT", "WH", "WW", "G"),
                   default=None, help="sparse preview attention: tiles of TTxTHxTW tokens, a window of WTxWHxWW "
                   "tiles, the first G latent frames global (SurfConfig.preview_attention)")


def _config_from(args, default):
    """``--preset`` (else ``default``: a preset name or a ``SurfConfig``) with the command line's changes."""
    from surf_accel.config import SurfConfig

    if args.preset or not isinstance(default, SurfConfig):
        cfg = SurfConfig.preset(args.preset or default)
    else:
        cfg = default
    changes = {}
    for attr, key in (("switch_step", "switch_step"), ("preview_steps", "preview_steps"),
                      ("refine_steps", "refine_steps"), ("refine_start", "refine_start"), ("handoff", "handoff"),
                      ("refine_expert", "refine_expert")):
        v = getattr(args, attr, None)
        if v is not None:
            changes[key] = v
    if getattr(args, "optimal_size", None):
        changes["optimal_size"] = tuple(args.optimal_size)
    if getattr(args, "window", None):
        changes["window"] = tuple(args.window)
    if getattr(args, "sparse_preview", None):
        from surf_accel.ops.sparse_attention import SparsePattern

        changes["preview_attention"] = SparsePattern.from_numbers(args.sparse_preview)
    return cfg.replace(**changes) if changes else cfg


# ---------------------------------------------------------------------------- estimate
def cmd_estimate(args) -> int:
    from surf_accel.catalogue import estimate, family_defaults, models  # imports diffusers: only for this command

    catalogue = models()
    if args.model not in catalogue:
        raise ValueError(f"unknown model {args.model!r}; known: {sorted(catalogue)}")
    defaults = family_defaults()[catalogue[args.model].family]
    cfg = _config_from(args, defaults.preset)
    guidance = True if args.cfg else (False if args.no_cfg else None)
    frames = args.frames if args.frames is not None else defaults.frames
    refiner = args.refiner
    if refiner is not None and refiner not in catalogue and (os.path.exists(refiner) or os.sep in refiner):
        from surf_accel.training.refiner_spec import load_refiner_spec

        try:
            info = load_refiner_spec(refiner)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        refiner = info.spec
        # the refiner's own step count and training windows, unless the command line sets them
        changes = {}
        if args.refine_steps is None and info.num_steps is not None:
            changes["refine_steps"] = info.num_steps
        if args.window is None and info.window is not None:
            changes["window"] = tuple(info.window)
        if changes:
            cfg = cfg.replace(**changes)
        print(f"refiner {args.refiner} ({info.source}): {info.spec.num_layers} layers, width {info.spec.dim}, "
              f"ffn {info.spec.ffn_dim}, {info.spec.params / 1e6:.3g}M block parameters, "
              f"{cfg.refine_steps if cfg.refine_steps is not None else 'default'} steps, window {cfg.window}")
    est = estimate(args.model, args.height, args.width, frames, cfg, steps=args.steps, guidance=guidance,
                   refiner=refiner, refiner_transformer=args.refiner_transformer, cp_degree=args.cp)
    print(est.plan.describe())
    print()
    print(est.table())
    if args.cp > 1:
        print()
        print(est.per_gpu_table(args.cp))
    return 0


# ---------------------------------------------------------------------------- plan
def cmd_plan(args) -> int:
    from surf_accel.plan_target import plan_for_target  # imports diffusers: only for this command

    try:
        plan = plan_for_target(args.model, args.height, args.width, args.target, frames=args.frames,
                               steps=args.steps, trained=args.trained_refiners)
    except ValueError as e:
        print(f"surf-accel plan: {e}", file=sys.stderr)
        return 2
    print(f"{args.model} at {args.height}x{args.width}, target {args.target:g}x: the plan with the fewest "
          "approximations predicted to reach it")
    print(plan.describe())
    return 0


# ---------------------------------------------------------------------------- generate
def _skeleton_pipeline(path: str):
    """The pipeline of the model folder ``path`` built from its config files alone: diffusers models on the
    meta device (no weights read), schedulers and guiders from their configs, text and image encoders left
    out. What ``generate`` checks a request against before it loads anything."""
    import diffusers
    from accelerate import init_empty_weights

    index_path = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a local diffusers model folder")
    if not os.path.isfile(index_path):
        raise ValueError(f"{path!r} is not a diffusers model folder: it has no model_index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{index_path} cannot be read: {e}") from None
    cls = getattr(diffusers, str(index.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ValueError(f"{index_path} names {index.get('_class_name')!r}, not a diffusers pipeline")
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        part_cls = getattr(diffusers, str(spec[1]), None) if spec[0] == "diffusers" else None
        if part_cls is None:
            parts[name] = None
            continue
        try:
            config = part_cls.load_config(os.path.join(path, name))
            with init_empty_weights():
                parts[name] = part_cls.from_config(config)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{os.path.join(path, name)}: its {spec[1]} config cannot be read: {e}") from None
    return cls(**parts)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device {device}: {e}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def _outputs(args) -> list[str]:
    """The files ``generate`` writes: the video, and with ``--baseline`` the baseline's beside it."""
    root, ext = os.path.splitext(args.output)
    return [args.output] + ([f"{root}_baseline{ext}"] if args.baseline else [])


def _check_outputs(args) -> list[str]:
    """The output files, each a video name in a folder that takes a new file, none there already unless
    ``--overwrite``."""
    paths = _outputs(args)
    if os.path.splitext(args.output)[1].lower() not in files.VIDEO_SUFFIXES:
        raise ValueError(f"--output {args.output}: a video file name ending in {', '.join(files.VIDEO_SUFFIXES)}")
    for path in paths:
        if os.path.isfile(path) and not args.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
        try:
            files.check_writable(path)
        except files.WriteError as e:
            raise ValueError(str(e)) from None
    return paths


@dataclasses.dataclass
class _Checked:
    """What ``generate`` checked before loading the model."""

    adapter: Any
    config: Any  # SurfConfig
    call_params: Any  # the pipeline's __call__ parameters
    outputs: list[str]
    setting: Any  # the model folder's FolderSetting, or None
    request: dict  # height, width, num_frames, num_inference_steps, guidance_scale (None: the pipeline's)
    refiner: Optional[str]  # the refiner folder, or None: the base model refines


def _cache_options(setting, spec: str) -> dict:
    """The folder setting's TeaCache rescale for a ``--cache teacache:T`` (other caches take none)."""
    if setting is not None and setting.teacache is not None and spec.split(":")[0].strip().lower() == "teacache":
        return {"teacache_fit": setting.teacache}
    return {}


def _refiner_flags(folder: Optional[str]) -> dict:
    """The planner's view of the refiner in ``folder`` (``None``: the base model), from its config.json:
    a trained ``surf_accel.Refiner`` (one pass per step, its own steps) or a transformer of the family."""
    if folder is None:
        return {}
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("format") == REFINER_FORMAT:
        return {"trained_refiner": True, "trained_refiner_steps": cfg.get("num_steps")}
    return {"refiner_transformer": True}


def _check_generate(args) -> _Checked:
    """Every check that needs no weights, before the model loads: device, output files, the model folder's
    pipeline class, the SURF setting, the cache form, and the request against the folder's configs
    (sizes, steps); ``ValueError``/``TypeError`` with the reason."""
    import inspect

    from surf_accel.api import _adapter_for
    from surf_accel.planner import Request, plan_stages

    _check_device(args.device)
    outputs = _check_outputs(args)
    if args.image is not None and not os.path.isfile(args.image):
        raise ValueError(f"--image {args.image}: no such file")
    skeleton = _skeleton_pipeline(args.model)
    adapter = _adapter_for(skeleton)
    call_params = inspect.signature(type(skeleton).__call__).parameters
    if args.true_cfg_scale is not None and "true_cfg_scale" not in call_params:
        raise ValueError(f"--true-cfg-scale is for HunyuanVideo pipelines; {type(skeleton).__name__} takes "
                         "--guidance (classifier-free guidance)")
    setting = folder_setting.read(args.model)
    cfg = _config_from(args, setting.config if setting is not None else adapter.default_preset)
    defaults = {"height": 720, "width": 1280, "num_frames": call_params["num_frames"].default,
                "num_inference_steps": 50, "guidance_scale": None, **(setting.call if setting else {})}
    given = {"height": args.height, "width": args.width, "num_frames": args.frames,
             "num_inference_steps": args.steps, "guidance_scale": args.guidance}
    request = {k: defaults[k] if v is None else v for k, v in given.items()}
    refiner = setting.refiner if setting is not None and args.refiner is None else args.refiner
    if refiner == "none":
        refiner = None
    if refiner is not None and not os.path.isfile(os.path.join(refiner, "config.json")):
        raise ValueError(f"--refiner {refiner}: not a refiner or transformer folder (no config.json)")
    if args.cache:
        from surf_accel.registry import install_cache

        install_cache(skeleton, args.cache, **_cache_options(setting, args.cache))
    if "height" in call_params:
        plan_stages(Request(request["height"], request["width"], request["num_frames"],
                            request["num_inference_steps"]),
                    adapter.family_spec(skeleton), adapter.scheduler_spec(skeleton), cfg, **_refiner_flags(refiner))
    return _Checked(adapter, cfg, call_params, outputs, setting, request, refiner)


def _load_pipeline(path: str, dtype: str, device: str, offload: Optional[str], compile_mode: Optional[str] = None):
    import torch
    from diffusers import DiffusionPipeline

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    pipe = DiffusionPipeline.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    _offload_and_compile(pipe, device, offload, compile_mode)
    return pipe


def _offload_and_compile(pipe, device: str, offload: Optional[str], compile_mode: Optional[str]) -> None:
    """``--offload model|sequential|group`` (diffusers' own offloading) and ``--compile regional|full``
    (``compile_repeated_blocks()`` or the whole transformer in place), as a user would set them up."""
    import torch

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1)
    else:
        pipe.to(device)
    if compile_mode == "regional":
        pipe.transformer.compile_repeated_blocks()
    elif compile_mode == "full":
        pipe.transformer.compile()


def cmd_generate(args) -> int:
    import torch

    import surf_accel

    checked = _check_generate(args)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    pipe = _load_pipeline(args.model, dtype, args.device, args.offload, args.compile)
    adapter, call_params, request = checked.adapter, checked.call_params, checked.request
    frames = request["num_frames"]
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_frames=frames,
                  num_inference_steps=request["num_inference_steps"], output_type="np")
    sized = "height" in call_params  # HunyuanVideo15ImageToVideoPipeline sizes the call from its image
    if sized:
        kwargs.update(height=request["height"], width=request["width"])
    if request["guidance_scale"] is not None:
        if "guidance_scale" in call_params:
            kwargs["guidance_scale"] = request["guidance_scale"]
        else:  # HunyuanVideo-1.5: classifier-free guidance is the pipeline's guider
            pipe.register_modules(guider=pipe.guider.new(guidance_scale=request["guidance_scale"]))
    if args.guidance_2 is not None:  # Wan2.2 A14B's low-noise expert (the pipeline refuses it elsewhere)
        kwargs["guidance_scale_2"] = args.guidance_2
    if args.true_cfg_scale is not None:
        kwargs["true_cfg_scale"] = args.true_cfg_scale
    fps = args.fps if args.fps is not None else adapter.video_fps(pipe)
    if args.image:
        from diffusers.utils import load_image

        kwargs["image"] = load_image(args.image)
    if args.max_sequence_length is not None:
        kwargs["max_sequence_length"] = args.max_sequence_length

    def gen():
        return torch.Generator(device="cpu").manual_seed(args.seed)

    times = {}
    if args.baseline:  # the pipeline as diffusers runs it: no SURF, no --cache
        t0 = time.perf_counter()
        video = pipe(generator=gen(), **kwargs).frames[0]
        times["baseline"] = time.perf_counter() - t0
        files.write_video(checked.outputs[1], video, fps)
        print(f"wrote {checked.outputs[1]} (baseline: the unpatched pipeline, no cache)")
    if args.cache:
        from surf_accel.registry import install_cache

        print(f"cache: {install_cache(pipe, args.cache, **_cache_options(checked.setting, args.cache))}",
              file=sys.stderr)
    refiner = None
    if checked.refiner is not None:
        refiner = folder_setting.load_refiner(checked.refiner, dtype=pipe.transformer.dtype,
                                              device=pipe.transformer.device)
        print(f"refiner: {checked.refiner} ({type(refiner).__name__})", file=sys.stderr)
    with surf_accel.patched(pipe, checked.config, refiner=refiner):
        if sized:
            plan = surf_accel.api.plan_for(pipe, height=request["height"], width=request["width"], num_frames=frames,
                                           num_inference_steps=request["num_inference_steps"])
            print(plan.describe(), file=sys.stderr)
        t0 = time.perf_counter()
        video = pipe(generator=gen(), **kwargs).frames[0]
        times["surf"] = time.perf_counter() - t0
        if not sized:
            print(pipe._surf_last_plan.describe(), file=sys.stderr)
    files.write_video(args.output, video, fps)
    print(f"wrote {args.output} (SURF{' + ' + args.cache if args.cache else ''})")
    for k, v in times.items():
        print(f"{k:9s} {v:8.2f} s")
    if "baseline" in times:
        print(f"speedup   {times['baseline'] / times['surf']:8.2f}x")
    return 0


# ---------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from surf_accel import info  # imports torch and the kernels: only when asked for

    return int(info.main(["--check"] * args.check + ["--real"] * args.real + args.rest) or 0)


# ---------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="toy-world demo: baseline vs SURF on the shipped tiny Wan (CPU)")
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)


# ---------------------------------------------------------------------------- train-refiner
def cmd_train_refiner(args) -> int:
    import logging

    import torch

    from surf_accel.training import load_config

    try:
        cfg = load_config(args.config)
    except FileNotFoundError as e:
        print(f"surf-accel train-refiner: error: {e}", file=sys.stderr)
        return 2
    if args.output_dir:
        cfg = dataclasses.replace(cfg, output_dir=os.path.abspath(args.output_dir))
    if args.plan:
        return _plan_training(cfg, args)
    from surf_accel.training.loop import export_checkpoint, train  # heavy (accelerate, diffusers): not for --plan

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    if args.export_checkpoint:
        try:
            print(f"refiner -> {export_checkpoint(cfg)}")
        except FileNotFoundError as e:
            print(f"surf-accel train-refiner: error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        res = train(cfg, resume=not args.no_resume, stop_after_steps=args.stop_after_steps,
                    max_minutes=args.max_minutes, progress=not args.quiet)
    except FileNotFoundError as e:
        print(f"surf-accel train-refiner: error: {e}", file=sys.stderr)
        return 2
    if not res.is_main:
        return 0
    if res.finished:
        print(f"trained {res.step} steps in {res.seconds:.1f} s; refiner -> {res.export_dir}")
    else:
        print(f"stopped at step {res.step} of {cfg.train.max_steps} ({res.seconds:.1f} s); run the same command "
              "again to resume")
    return 0


def _plan_training(cfg, args) -> int:
    """``train-refiner --plan``: the run's sizes, memory, FLOPs, time and disk from config files alone."""
    try:
        p = plan(cfg, gpu=args.gpu, processes=args.processes, caption_tokens=args.caption_tokens, mfu=args.mfu)
    except FileNotFoundError as e:
        print(f"surf-accel train-refiner: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(p.to_dict(), indent=2) if args.json else p.table())
    return 0


def _add_train_refiner(sub) -> None:
    t = sub.add_parser("train-refiner", help="train a SURF refiner (YAML/JSON config; accelerate: launch with "
                       "`accelerate launch -m surf_accel.training CONFIG` for several processes)")
    t.add_argument("config", help="training config (.yaml/.yml/.json), see README 'Training a refiner'")
    t.add_argument("--output-dir", default=None, help="override the config's output_dir")
    t.add_argument("--export-checkpoint", action="store_true", help="export the newest checkpoint (EMA) as the "
                   "refiner and exit (a run stopped before max_steps)")
    t.add_argument("--no-resume", action="store_true", help="discard the checkpoints in output_dir and start at step 0")
    t.add_argument("--stop-after-steps", type=int, default=None, help="stop after this many steps of this call "
                   "(resumable; no export)")
    t.add_argument("--max-minutes", type=float, default=None, help="stop after this long (resumable; no export)")
    t.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--plan", action="store_true", help="print what the run needs (parameters, memory per GPU, "
                   "activations per phase, FLOPs and time per step and run, pair-store disk) from the config files "
                   "alone, and exit: no weights loaded, no GPU needed")
    t.add_argument("--gpu", choices=tuple(GPUS), default="H100", help="with --plan: the GPU its memory and time are "
                   "for (default H100)")
    t.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="with --plan: processes (GPUs) the run will be launched with (default 1)")
    t.add_argument("--caption-tokens", type=_positive_int, default=DEFAULT_CAPTION_TOKENS, metavar="N",
                   help=f"with --plan: average caption length in text-encoder tokens (default {DEFAULT_CAPTION_TOKENS})")
    t.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="with --plan: assumed model-FLOPs utilisation, "
                   f"a share of the GPU's dense peak (default {DEFAULT_MFU})")
    t.add_argument("--json", action="store_true", help="with --plan: the plan as JSON")
    t.set_defaults(func=cmd_train_refiner)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surf-accel", description="SURF video-diffusion acceleration for diffusers")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a video from a local diffusers Wan2.1, Wan2.2, HunyuanVideo or "
                       "HunyuanVideo-1.5 folder with SURF")
    g.add_argument("model", help="local diffusers model folder (WanPipeline, WanImageToVideoPipeline, "
                   "HunyuanVideoPipeline, HunyuanVideo15Pipeline or HunyuanVideo15ImageToVideoPipeline)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None, help="HunyuanVideo uses it only with --true-cfg-scale > 1")
    g.add_argument("--image", default=None, help="first frame (image-to-video pipelines)")
    g.add_argument("--height", type=_positive_int, default=None,
                   help="default: the folder's surf_config.json, else 720 (HunyuanVideo-1.5 I2V: ignored, the "
                        "pipeline sizes the video from the image)")
    g.add_argument("--width", type=_positive_int, default=None,
                   help="default: the folder's surf_config.json, else 1280")
    g.add_argument("--frames", type=_positive_int, default=None, help="default: the pipeline's (Wan 81, HunyuanVideo 129)")
    g.add_argument("--steps", type=_positive_int, default=None, help="default: the folder's surf_config.json, else 50")
    g.add_argument("--refiner", default=None, metavar="FOLDER",
                   help="a trained refiner folder (surf-accel train-refiner) or a transformer folder of the family "
                        "(training-free refine with it), or 'none' for the base model; default: the refiner the "
                        "model folder's surf_config.json names, else the base model")
    g.add_argument("--guidance", type=float, default=None, help="guidance_scale (default: the pipeline's; Wan: "
                   "classifier-free guidance 5.0, HunyuanVideo: embedded guidance 6.0, HunyuanVideo-1.5: its "
                   "guider's guidance_scale)")
    g.add_argument("--guidance-2", type=float, default=None, help="Wan2.2 A14B only: guidance_scale_2 of the "
                   "low-noise expert (default: --guidance, as the pipeline does)")
    g.add_argument("--true-cfg-scale", type=float, default=None,
                   help="HunyuanVideo only: true classifier-free guidance (with --negative-prompt; two passes per step)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fps", type=_positive_int, default=None, help="mp4 frame rate (default: Wan 16, Wan2.2 TI2V-5B 24, "
                   "HunyuanVideo 24)")
    g.add_argument("--max-sequence-length", type=_positive_int, default=None)
    g.add_argument("--output", default="surf.mp4", help="the video (.mp4, .mkv or .mov); refused if it exists, "
                   "unless --overwrite")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g.add_argument("--baseline", action="store_true", help="also run the unpatched pipeline (no SURF, no --cache) "
                   "into OUTPUT_baseline.mp4 and print both times")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: bfloat16 on CUDA, float32 otherwise")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.add_argument("--offload", nargs="?", const="model", choices=("model", "sequential", "group"), default=None,
                   help="diffusers offloading: model (enable_model_cpu_offload, the default of a bare --offload), "
                   "sequential (enable_sequential_cpu_offload) or group (block-level group offloading)")
    g.add_argument("--compile", nargs="?", const="regional", choices=("regional", "full"), default=None,
                   help="torch.compile the transformer: regional (compile_repeated_blocks, the default of a bare "
                   "--compile) or full; SURF compiles once per stage resolution, never per step")
    g.add_argument("--cache", default=None, metavar="SPEC", help="a cache on the transformer, stacked with SURF: "
                   "teacache:THRESHOLD (published coefficients picked from the model's config), fbc:THRESHOLD "
                   "(diffusers FirstBlockCache), seacache[:THRESHOLD], cache-dit[:THRESHOLD] (its DBCache on the "
                   "transformer, cache-dit's other defaults; pip install cache-dit); magcache is refused")
    _add_config_args(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("estimate", help="FLOPs per stage, baseline vs SURF, for a published model config")
    e.add_argument("--model", default="wan2.1-14b", help="wan2.1-14b, wan2.1-1.3b, wan2.2-a14b (two 14B experts, "
                   "one per step), wan2.2-ti2v-5b, hunyuanvideo (13B), hunyuanvideo-1.5-480p or hunyuanvideo-1.5-720p "
                   "(8.3B; the checkpoint's optimal size)")
    e.add_argument("--height", type=int, required=True)
    e.add_argument("--width", type=int, required=True)
    e.add_argument("--frames", type=int, default=None, help="default: the model's (Wan2.1 81, HunyuanVideo 129)")
    e.add_argument("--steps", type=int, default=50, help="the baseline's steps")
    passes = e.add_mutually_exclusive_group()
    passes.add_argument("--no-cfg", action="store_true", help="count one pass per step (no classifier-free guidance)")
    passes.add_argument("--cfg", action="store_true", help="count two passes per step (HunyuanVideo: true CFG; "
                        "default: Wan2.1 two, HunyuanVideo one, as it is guidance-distilled)")
    refine = e.add_mutually_exclusive_group()
    refine.add_argument("--refiner", default=None, help="a trained refiner: a model name (wan2.1-1.3b, ...), a "
                        "Refiner folder or config.json, a WanTransformer3DModel config, or a train-refiner config (its "
                        "steps and windows are used unless --refine-steps/--window say otherwise; default: "
                        "training-free refine with the base model)")
    refine.add_argument("--refiner-transformer", default=None, metavar="MODEL",
                        help="a training-free refine by another transformer of the family, a model name "
                        "(wan2.1-1.3b refining wan2.1-14b), with the call's guidance passes")
    e.add_argument("--cp", type=int, default=1, metavar="N",
                   help="plan for context parallelism over N ranks (Ulysses or ring degree): every stage's tokens "
                   "split evenly, the preview moved to the nearest size that splits, a size that cannot refused; "
                   "adds each GPU's FLOPs and Ulysses all-to-all traffic")
    _add_config_args(e)
    e.set_defaults(func=cmd_estimate)

    pl = sub.add_parser("plan", help="the SURF plan predicted to reach a speedup target (preset, refine model, "
                        "windows, cache), with what it assumes")
    pl.add_argument("--model", default="wan2.1-14b", help="a published model name (see estimate --model)")
    pl.add_argument("--height", type=int, required=True)
    pl.add_argument("--width", type=int, required=True)
    pl.add_argument("--target", type=float, required=True, help="the speedup to reach, e.g. 10")
    pl.add_argument("--frames", type=int, default=None, help="default: the model's")
    pl.add_argument("--steps", type=int, default=50, help="the baseline's steps")
    pl.add_argument("--trained-refiners", action="store_true",
                    help="also consider trained refiners (none is published: they need `surf-accel train-refiner`)")
    pl.set_defaults(func=cmd_plan)

    i = sub.add_parser("info", help="versions, device, and which backend serves each op")
    i.add_argument("--check", action="store_true", help="run every available backend against the fp32 reference")
    i.add_argument("--real", action="store_true", help="with --check: real model shapes (default on a GPU)")
    i.add_argument("rest", nargs=argparse.REMAINDER)
    i.set_defaults(func=cmd_info)

    _add_demo(sub)
    b = sub.add_parser("bench", help="the stack table on the shipped toy model (CPU): SURF with caches and a sparse "
                       "preview, speedup and signature",
                       description="The stack table on the shipped toy model. One seed of the 32 prompts takes "
                       "about 20 minutes of one CPU thread (benchmarks/results/stacking.md: 38 CPU s per prompt over "
                       "its rows); run one process per seed with --json and pool them with --combine.")
    from surf_accel.bench import stacking

    stacking.add_arguments(b)
    b.set_defaults(func=stacking.main)
    _add_train_refiner(sub)
    return parser


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded by benchmarks
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, NotImplementedError) as e:
        print(f"surf-accel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except files.WriteError as e:
        print(f"surf-accel {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

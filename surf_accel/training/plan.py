"""What a refiner training run needs, before it runs (``surf-accel train-refiner CONFIG --plan``).

``plan(config)`` reads the base pipeline's config files only (no weights, no pipeline), builds the
refiner transformer on the meta device at the config's shapes and counts, per GPU:

- **parameters**: total and trainable (LoRA adapters as peft adds them);
- **model state**: fp32 weights, fp32 gradients and AdamW's two fp32 moments of the trainable
  parameters, the bf16 copies autocast makes of the weights under mixed precision, DDP's gradient
  buckets (one more fp32 copy of the gradients) with several processes, the fp32 EMA; under ``fsdp``
  weights, gradients, moments and EMA are sharded over the processes and the largest unit (a Wan
  block, or the layers outside the blocks) is gathered whole, weights and gradients in fp32;
- **activations** of one micro-batch per curriculum phase (``activation_bytes``), with and without
  gradient checkpointing;
- **FLOPs** per optimiser step from the cost model's transformer count
  (``surf_accel.cost_model.forward_flops`` with the config's windows): 3 forwards a training step
  (backward about 2), 4 with gradient checkpointing; time at an assumed model-FLOPs utilisation of a
  named GPU's dense peak;
- **disk** for the pair store.

Activations (``activation_bytes``) count what autograd saves in diffusers' ``WanTransformerBlock``
forward (``diffusers.models.transformers.transformer_wan``), per block, ``L`` video tokens of width
``d``, FFN width ``f``, ``c`` bytes per compute-dtype element (2 under bf16/fp16 autocast, else 4):

- fp32 whatever the precision (the blocks compute their norms in fp32): the input and the normalised
  output of ``norm1``, ``norm2``, ``norm3`` and the input and normalised value of the three
  RMSNorms over video tokens (self-attention q and k, cross-attention q), ``12 L d``; per-token
  statistics (two per LayerNorm, one per RMSNorm) ``9 L``; the attention log-sum-exp, ``heads``
  per query;
- compute dtype: the inputs of the q/k/v, self-attention output, cross-attention q and output and
  first FFN projections, the self-attention output before its gate and the cross-attention query,
  ``7 L d``; GELU's input and output, ``2 L f``; self-attention's q, k, v (its output is the output
  projection's input): ``3 L d`` dense, or with shifted windows q, k, v and the output in the padded
  window batch, ``4 S d`` (``S``: window slots, every window padded to the largest);
- text: the cross-attention keys (RMSNorm input and normalised, fp32) and keys and values
  (compute dtype) of ``Lt`` text tokens.

Outside the blocks: the latents, the rotary tables, ``norm_out`` and the head, and the text
embedder. Gradient checkpointing (non-reentrant, as diffusers runs it) keeps only each block's
input, ``L d c``, and recomputes one block at a time in the backward pass (``recompute``).
Counted as the composite (unfused) RMSNorm saves; attention as a flash/memory-efficient kernel saves
(no ``L x L`` matrix). tests/training/test_plan.py checks the count against the bytes autograd saves
in a real forward on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from surf_accel.cost_model import TransformerSpec, forward_flops
from surf_accel.ops.window_reference import window_ids
from surf_accel.training.config import RefinerTrainingConfig

GIB = 1024 ** 3
# a detailed one-paragraph caption (about 75 words) in UMT5 tokens
DEFAULT_CAPTION_TOKENS = 100
# model-FLOPs utilisation assumed for the time: a share of the GPU's dense bf16 peak that large
# transformer training commonly sustains
DEFAULT_MFU = 0.4
DEGRADATION_RECORD_BYTES = 16


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense (no structured sparsity) bf16 tensor-core peak
    memory_gib: float


# NVIDIA's datasheets (dense bf16 = half the "with sparsity" figure): H100 SXM, H100 PCIe, H200 SXM,
# A100 SXM/PCIe (80 GB and 40 GB), L40S, B200 (HGX B200, per GPU)
GPUS = {g.name: g for g in (
    Gpu("H100", 989.0, 80), Gpu("H100-PCIe", 756.0, 80), Gpu("H200", 989.0, 141), Gpu("A100-80GB", 312.0, 80),
    Gpu("A100-40GB", 312.0, 40), Gpu("L40S", 362.0, 48), Gpu("B200", 2250.0, 180))}


@dataclass(frozen=True)
class Activations:
    """Bytes one micro-batch's forward leaves for the backward: ``saved`` until the backward, and with
    gradient checkpointing ``recompute``, one block's activations live while it is recomputed."""

    saved: int
    recompute: int = 0

    @property
    def peak(self) -> int:
        return self.saved + self.recompute


def _window_slots(grid: tuple[int, int, int], window: tuple[int, int, int], shifted: bool) -> tuple[int, int]:
    """(slots, windows) of the padded window batch the training attention builds: every window padded
    to the largest (``window_reference.window_attention_partitioned``)."""
    shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
    counts = torch.bincount(window_ids(grid, window, shift))
    counts = counts[counts > 0]
    return int(counts.numel() * counts.max()), int(counts.numel())


def activation_bytes(tcfg: dict, latent_size: tuple[int, int, int], text_len: int, *, batch: int = 1,
                     compute_bytes: int = 4, gradient_checkpointing: bool = False,
                     window: Optional[tuple[int, int, int]] = None) -> Activations:
    """What the forward of a ``WanTransformer3DModel`` of config ``tcfg`` saves for the backward, for
    ``batch`` latents of ``latent_size`` ``(T, H, W)`` and ``text_len`` text tokens (module docstring).
    ``compute_bytes``: 2 under bf16/fp16 autocast, 4 in fp32; ``window``: shifted windows in tokens
    (odd blocks shifted by half a window, as ``training_windows`` runs them)."""
    pt, ph, pw = (int(p) for p in tcfg["patch_size"])
    heads, d = int(tcfg["num_attention_heads"]), int(tcfg["num_attention_heads"] * tcfg["attention_head_dim"])
    f, n_layers, c = int(tcfg["ffn_dim"]), int(tcfg["num_layers"]), compute_bytes
    grid = (math.ceil(latent_size[0] / pt), latent_size[1] // ph, latent_size[2] // pw)
    L, Lt = math.prod(grid), int(text_len)

    def block(shifted: bool) -> int:
        fp32 = 4 * (12 * L * d + 9 * L + heads * L)  # norms; cross-attention log-sum-exp
        compute = c * (7 * L * d + 2 * L * f)
        if window is None:
            self_attn = 3 * L * d * c + 4 * heads * L
        else:
            slots, _ = _window_slots(grid, window, shifted)
            self_attn = 4 * slots * d * c + 4 * heads * slots
        text = Lt * d * (2 * 4 + 2 * c) + 4 * Lt
        return fp32 + compute + self_attn + text

    outside = (c * L * pt * ph * pw * int(tcfg["in_channels"])  # the latents (patch embedding's input)
               + 4 * (2 * L * d + 2 * L) + c * L * d  # norm_out and the head
               + c * Lt * (int(tcfg["text_dim"]) + 3 * d))  # the text embedder
    rotary = 2 * 4 * L * int(tcfg["attention_head_dim"])  # cos and sin, saved by the blocks' RoPE
    blocks = [block(i % 2 == 1 and window is not None) for i in range(n_layers)]
    if gradient_checkpointing:
        return Activations(batch * (outside + n_layers * L * d * c), batch * (max(blocks) + rotary))
    return Activations(batch * (outside + rotary + sum(blocks)))


@dataclass(frozen=True)
class PhasePlan:
    steps: int
    frames: int
    batch_size: int  # per process and micro-batch
    latent_size: tuple[int, int, int]  # (T, H, W)
    tokens: int  # video tokens per clip after patching
    forward_flops: float  # one clip
    step_flops: float  # one optimiser step, every process and micro-batch
    activations: Activations  # one micro-batch, with the config's gradient checkpointing
    activations_other: Activations  # the same with gradient checkpointing switched the other way
    step_seconds: float

    @property
    def seconds(self) -> float:
        return self.steps * self.step_seconds


@dataclass(frozen=True)
class TrainingPlan:
    """``plan(config)``: sizes, memory per GPU (bytes), FLOPs, time and disk of a training run."""

    config: RefinerTrainingConfig
    transformer_config: dict
    params_total: int
    params_trainable: int
    processes: int
    gpu: Gpu
    mfu: float
    model_state: dict  # name -> bytes per GPU
    phases: tuple[PhasePlan, ...]
    caption_tokens: int
    pairs: int
    pair_bytes: int
    text_dtype: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def model_state_bytes(self) -> int:
        return sum(self.model_state.values())

    @property
    def peak_bytes(self) -> int:
        """Model state plus the largest phase's activations."""
        return self.model_state_bytes + max(p.activations.peak for p in self.phases)

    @property
    def disk_bytes(self) -> int:
        return self.pairs * self.pair_bytes

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def to_dict(self) -> dict:
        t = self.config.train
        return {
            "gpu": dataclasses.asdict(self.gpu), "processes": self.processes, "mfu": self.mfu,
            "strategy": t.strategy, "mixed_precision": t.mixed_precision,
            "gradient_checkpointing": t.gradient_checkpointing,
            "transformer_config": self.transformer_config,
            "params": {"total": self.params_total, "trainable": self.params_trainable},
            "memory_per_gpu_bytes": {"model_state": dict(self.model_state), "peak": self.peak_bytes},
            "phases": [{"steps": p.steps, "frames": p.frames, "batch_size": p.batch_size,
                        "latent_size": list(p.latent_size), "tokens": p.tokens, "forward_flops": p.forward_flops,
                        "step_flops": p.step_flops,
                        "activation_bytes": dataclasses.asdict(p.activations) | {"peak": p.activations.peak},
                        "activation_bytes_other_checkpointing": dataclasses.asdict(p.activations_other)
                        | {"peak": p.activations_other.peak},
                        "step_seconds": p.step_seconds, "seconds": p.seconds} for p in self.phases],
            "run_seconds": self.seconds,
            "disk": {"pairs": self.pairs, "bytes_per_pair": self.pair_bytes, "bytes": self.disk_bytes,
                     "caption_tokens": self.caption_tokens, "text_dtype": self.text_dtype},
            "warnings": list(self.warnings),
        }

    def table(self) -> str:
        t, gb = self.config.train, lambda b: f"{b / GIB:9.3f} GiB"
        gc = t.gradient_checkpointing
        tc = self.transformer_config
        lines = [f"refiner: {tc['num_layers']} layers, width {tc['num_attention_heads'] * tc['attention_head_dim']}, "
                 f"ffn {tc['ffn_dim']}, {tc['num_attention_heads']} heads (init {self.config.model.init}); "
                 f"window {self.config.model.window}",
                 f"parameters: {self.params_total:,} total, {self.params_trainable:,} trainable",
                 f"{self.processes} process(es) x {self.gpu.name} ({self.gpu.memory_gib:g} GiB, "
                 f"{self.gpu.bf16_tflops:g} dense bf16 TFLOP/s); strategy {t.strategy}, mixed_precision "
                 f"{t.mixed_precision}, gradient_checkpointing {str(gc).lower()}",
                 "", "memory per GPU (model state):"]
        lines += [f"  {k:45s} {gb(v)}" for k, v in self.model_state.items()]
        lines.append(f"  {'total':45s} {gb(self.model_state_bytes)}")
        lines += ["", "per phase (one micro-batch per process; activations with and without gradient checkpointing):",
                  f"  {'steps':>6s} {'frames':>6s} {'latent TxHxW':>13s} {'tokens':>7s} {'batch':>5s} "
                  f"{'ckpt GiB':>9s} {'none GiB':>9s} {'TFLOP/step':>11s} {'s/step':>8s} {'hours':>7s}"]
        for p in self.phases:
            on, off = (p.activations, p.activations_other) if gc else (p.activations_other, p.activations)
            lt = "x".join(str(x) for x in p.latent_size)
            lines.append(f"  {p.steps:>6d} {p.frames:>6d} {lt:>13s} {p.tokens:>7d} {p.batch_size:>5d} "
                         f"{on.peak / GIB:>9.3f} {off.peak / GIB:>9.3f} {p.step_flops / 1e12:>11.4g} "
                         f"{p.step_seconds:>8.3g} {p.seconds / 3600:>7.3g}")
        lines += ["", f"peak per GPU: {gb(self.peak_bytes).strip()} (model state + the largest phase's activations"
                  f"{' with' if gc else ' without'} gradient checkpointing) of {self.gpu.memory_gib:g} GiB",
                  f"time: {self.seconds / 3600:.2f} h on {self.processes} x {self.gpu.name} "
                  f"({self.seconds * self.processes / 3600:.1f} GPU-hours) at an assumed {self.mfu:.0%} of the "
                  f"dense {'bf16' if t.mixed_precision != 'no' else 'TF32 (half the bf16)'} peak; "
                  "FLOPs: 3 forwards a step, 4 with gradient checkpointing",
                  f"pair store: {self.pairs} pairs x {self.pair_bytes / 1e6:.2f} MB = {self.disk_bytes / 1e9:.2f} GB "
                  f"(z_hr and z_lr float32, the caption's embedding at {self.caption_tokens} tokens in "
                  f"{self.text_dtype}, {DEGRADATION_RECORD_BYTES} B degradation record)"]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _model_state(P: int, Pt: int, unit: tuple[int, int], processes: int, strategy: str, mixed: bool,
                 ema: bool) -> dict:
    """Bytes per GPU of the weights, gradients, AdamW moments, bf16 copies and EMA (module docstring).
    ``unit``: (parameters, trainable parameters) of the largest FSDP unit."""
    shard = processes if strategy == "fsdp" else 1
    state = {"weights (fp32)": 4 * P // shard, "gradients (fp32)": 4 * Pt // shard,
             "AdamW moments (2 x fp32)": 8 * Pt // shard}
    if mixed:
        state["bf16 weight copies (autocast)"] = 2 * P
    if strategy == "fsdp" and processes > 1:
        state["largest gathered unit (fp32 weights + grads)"] = 4 * unit[0] + 4 * unit[1]
    elif processes > 1:
        state["DDP gradient buckets (fp32)"] = 4 * Pt
    if ema:
        state["EMA (fp32)"] = 4 * Pt // shard
    return state


def _units(model) -> tuple[int, int]:
    """(parameters, trainable) of the largest FSDP unit: a ``WanTransformerBlock`` (one unit each, as
    the loop wraps them) or everything outside the blocks."""
    def count(params) -> tuple[int, int]:
        params = list(params)
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    in_blocks = {id(p) for p in model.blocks.parameters()}
    rest = count(p for p in model.parameters() if id(p) not in in_blocks)
    return max([rest] + [count(b.parameters()) for b in model.blocks])


def plan(cfg: RefinerTrainingConfig, *, gpu: str = "H100", processes: int = 1,
         caption_tokens: int = DEFAULT_CAPTION_TOKENS, mfu: float = DEFAULT_MFU) -> TrainingPlan:
    """The plan of ``cfg`` on ``processes`` GPUs of kind ``gpu`` (a key of ``GPUS``). Reads only config
    files; ``ValueError``/``TypeError``/``FileNotFoundError`` where the run would be refused at its start."""
    # heavy (diffusers): the CLI imports this module to build its parser, and only --plan needs these
    from diffusers import WanTransformer3DModel

    from surf_accel.refiner import Refiner
    from surf_accel.training.model import add_lora, config_pipeline, count_parameters, refiner_config
    from surf_accel.training.pairs import check_sizes

    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if processes < 1 or caption_tokens < 0 or not 0 < mfu <= 1:
        raise ValueError("processes must be >= 1, caption tokens >= 0 and the MFU in (0, 1]")
    cfg.check_paths()
    pipe = config_pipeline(cfg.base)
    tcfg = refiner_config(pipe, cfg.model)
    with torch.device("meta"):
        model = WanTransformer3DModel(**tcfg)
        if cfg.model.init == "lora":
            add_lora(model, cfg.model)
    Refiner(model).check_compatible(pipe.transformer)
    t, data = cfg.train, cfg.data
    check_sizes(pipe, data.height, data.width, data.num_frames, cfg.pairs, tcfg["patch_size"])
    vs, vt = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    P, Pt = count_parameters(model), count_parameters(model, trainable_only=True)
    mixed = t.mixed_precision != "no"
    c = 2 if mixed else 4
    g = GPUS[gpu]
    flops_per_s = g.bf16_tflops * 1e12 * (1 if mixed else 0.5) * mfu * processes
    spec = TransformerSpec.from_config(tcfg, "refiner", data.max_sequence_length)
    phases = []
    for ph in t.phases(data.num_frames):
        if (ph.frames - 1) % vt or ph.frames > data.num_frames:
            raise ValueError(f"a curriculum phase's frames must be 1 + {vt}k and at most data.num_frames "
                             f"({data.num_frames}), got {ph.frames}")
        lsize = ((ph.frames - 1) // vt + 1, data.height // vs, data.width // vs)
        fwd = forward_flops(spec, lsize, cfg.model.window)
        step = fwd["linear"] + fwd["attention"]
        step *= (4 if t.gradient_checkpointing else 3) * ph.batch_size * t.grad_accum * processes
        acts = {gc: activation_bytes(tcfg, lsize, data.max_sequence_length, batch=ph.batch_size, compute_bytes=c,
                                     gradient_checkpointing=gc, window=cfg.model.window) for gc in (True, False)}
        phases.append(PhasePlan(ph.steps, ph.frames, ph.batch_size, lsize, fwd["tokens"],
                                fwd["linear"] + fwd["attention"], step, acts[t.gradient_checkpointing],
                                acts[not t.gradient_checkpointing], step / flops_per_s))
    state = _model_state(P, Pt, _units(model), processes, t.strategy, mixed, t.ema_decay is not None)
    te = pipe.text_encoder.config
    text_dtype = cfg.base_dtype  # the store keeps the embeddings as the encoder, loaded in base_dtype, makes them
    text_width = int(te.get("d_model") or te.get("hidden_size"))
    z = int(pipe.vae.config["z_dim"])
    lsize = ((data.num_frames - 1) // vt + 1, data.height // vs, data.width // vs)
    pair_bytes = (2 * 4 * z * math.prod(lsize) + caption_tokens * text_width * torch.empty(
        0, dtype=getattr(torch, text_dtype)).element_size() + DEGRADATION_RECORD_BYTES)
    result = TrainingPlan(cfg, tcfg, P, Pt, processes, g, mfu, state, tuple(phases), caption_tokens,
                          data.num_clips + cfg.base_pairs.num, pair_bytes, text_dtype)
    return dataclasses.replace(result, warnings=_warnings(result))


def _warnings(p: TrainingPlan) -> tuple[str, ...]:
    t, out = p.config.train, []
    if t.strategy == "fsdp" and p.processes == 1:
        out.append("strategy fsdp with one process shards nothing; pass --processes N as you will launch it")
    if p.peak_bytes > p.gpu.memory_gib * GIB:
        knobs = []
        if not t.gradient_checkpointing:
            knobs.append("train.gradient_checkpointing: true")
        if t.strategy != "fsdp":
            knobs.append("train.strategy: fsdp over several processes (shards weights, gradients, moments, EMA)")
        if max(ph.batch_size for ph in p.phases) > 1:
            knobs.append("a smaller train.batch_size (curriculum batch_size) with more train.grad_accum")
        if t.mixed_precision == "no":
            knobs.append("train.mixed_precision: bf16")
        out.append(f"{p.peak_bytes / GIB:.1f} GiB per GPU exceeds the {p.gpu.name}'s {p.gpu.memory_gib:g} GiB; "
                   + ("what helps: " + "; ".join(knobs) if knobs else "a smaller refiner or fewer frames"))
    return tuple(out)


__all__ = ["Activations", "DEFAULT_CAPTION_TOKENS", "DEFAULT_MFU", "GPUS", "Gpu", "PhasePlan", "TrainingPlan",
           "activation_bytes", "plan"]

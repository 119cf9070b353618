"""`gand plan`: measure what a config's training step needs, then find the fastest setting that fits a GPU.

Per-component memory, per rank:
    params, grads            counted exactly from the built models (fp32 master weights)
    optimizer state          exactly, from the optimizer kind (Adam 2 tensors per parameter, RMSprop 1-2, SGD 0-1)
    EMA of G                 one more copy of G's parameters when enabled
    activations per image    measured by probe steps of the real training code on the current device:
                             - on a GPU, the allocator's peak over a D update and a G update (each its own phase)
                               at the real micro-batch m and at m/2 (a line through the two: intercept = everything
                               static, cuDNN workspaces and optimizer temporaries included; slope = activations per
                               image), each probe's networks freed and collected before the next;
                             - on a CPU, the bytes autograd saves for backward in the D and G phases at two sizes,
                               plus, for checkpointed networks, the largest block's recomputed activations, plus
                               autocast's cache of 16-bit weight copies in bf16/fp16: a CPU estimate.

A setting is (micro-batch, checkpointing, ZeRO stage, offload). ZeRO divides optimizer state (stage >= 1),
gradients (>= 2) and parameters (3) by the number of ranks; offload moves optimizer state (and, at stage 3,
parameters) to CPU RAM. The relative-speed figures are estimates, used only to rank the settings that fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gand.config import GandConfig, MemoryConfig
from gand.models import MODELS, build_from_config
from gand.train.memory import checkpoint_blocks

GIB = 1024**3
CHECKPOINTING = ("none", "g", "d", "both")
PROBE_SIZES = (2, 4)  # the CPU probe's micro-batches (saved tensors grow exactly linearly)
# The CPU estimate against the allocator's peaks on one H200: CAN-256, EMA off, measured with bench/memory.py on
# 2026-11-30 (docs/benchmarks.md). Keys: (batch, precision, checkpointing, ZeRO stage, optimizer offload).
# tests/unit/test_planner.py holds the estimate to within 15% of every row.
H200_TABLE_GIB = {
    (64, "fp32", "none", 0, "none"): 2.32,
    (64, "bf16", "none", 0, "none"): 1.50,
    (64, "bf16", "both", 0, "none"): 1.33,
    (64, "bf16", "both", 2, "cpu"): 1.12,
    (128, "fp32", "none", 0, "none"): 3.96,
    (128, "bf16", "none", 0, "none"): 2.27,
    (128, "bf16", "both", 0, "none"): 1.98,
}
CPU_ESTIMATE_ERROR = "-13% to +7% (CAN-256, batch 64 and 128, with and without checkpointing and ZeRO)"
OPTIMIZER_STATE_TENSORS = {"adam": 2, "sgd": 0, "rmsprop": 1}
# Relative throughput estimates (1.0 = plain DDP, no checkpointing, the whole batch in one pass). Checkpointing
# both networks measured 0.36 (batch 64) and 0.47 (batch 128) of bf16's speed on one H200 (CAN-256, 2026-11-30):
# each checkpointed block costs host time, not only a third more forward work. G alone and D alone are estimates
# from D's three forward passes per step against G's one. Offloading the optimizer measured 0.51 (DeepSpeed CPU Adam).
SPEED = {
    "checkpointing": {"none": 1.0, "g": 0.75, "d": 0.5, "both": 0.4},
    "zero_stage": {0: 1.0, 1: 0.98, 2: 0.96, 3: 0.85},
    "offload_optimizer": {"none": 1.0, "cpu": 0.5},
    "offload_params": {"none": 1.0, "cpu": 0.5},
}
MICRO_BATCH_HALF_EFFICIENCY = 4  # a pass of this many images runs at about half the per-image speed of a large one


@dataclass(frozen=True)
class Setting:
    micro_batch_size: int
    accumulation_steps: int
    checkpointing: str
    zero_stage: int
    offload_optimizer: str = "none"
    offload_params: str = "none"

    def overrides(self) -> list[str]:
        return [
            f"memory.micro_batch={self.micro_batch_size}",
            f"memory.grad_checkpointing={self.checkpointing}",
            f"memory.zero_stage={self.zero_stage}",
            f"memory.offload_optimizer={self.offload_optimizer}",
            f"memory.offload_params={self.offload_params}",
        ]


@dataclass
class Components:
    """What one rank holds, in bytes, for a given model and precision."""

    device: str
    precision: str  # as trained on that device (`auto` resolved)
    method: str  # "allocator" (GPU probe) or "saved-tensors" (CPU probe)
    params: dict[str, int]
    grads: dict[str, int]
    optimizer: dict[str, int]
    ema: int
    fixed: dict[str, int]  # per checkpointing option: everything that does not grow with the micro-batch
    per_image: dict[str, int]  # per checkpointing option: activations per image at the peak phase
    notes: list[str] = field(default_factory=list)


def measure(
    cfg: GandConfig,
    num_classes: int,
    device: torch.device,
    options: tuple[str, ...] = CHECKPOINTING,
    progress: Any = None,
) -> Components:
    """What one rank holds for `cfg` on `device`, probed for each checkpointing option in `options` (all of them
    for a plan; one is enough to predict a single setting, and each GPU probe builds and trains the networks)."""
    from gand.train.engine import resolve_precision

    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)[0]})
    g, d = build_from_config(cfg, num_classes)
    params = {"g": _bytes(g.parameters()), "d": _bytes(d.parameters())}
    optimizer = {name: params[name] * _state_tensors(opt) for name, opt in (("g", cfg.optim.g), ("d", cfg.optim.d))}
    ema = params["g"] if cfg.ema.half_life_kimg else 0
    static = sum(params.values()) * 2 + sum(optimizer.values()) + ema  # params + grads + optimizer + EMA
    components = Components(device.type, cfg.precision, "", params, dict(params), optimizer, ema, {}, {})
    if device.type == "cuda":
        components.method = "allocator"
        micro = cfg.memory.micro_batch or cfg.train.batch_size
        sizes = (max(1, micro // 2), micro)  # where the peak really is: extrapolating from 2 and 4 was far off
        for option in options:
            peaks = [max(_gpu_peaks(cfg, num_classes, option, size).values()) for size in sizes]
            if progress is not None:
                progress.advance()
            slope = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]) if sizes[1] > sizes[0] else 0.0
            components.per_image[option] = round(slope)
            components.fixed[option] = round(peaks[1] - slope * sizes[1])  # measured: includes `static`
    else:
        components.method = "saved-tensors"
        # Autocast keeps a 16-bit copy of every weight it casts for as long as the update runs (G's and D's in D's
        # update): 2 bytes per parameter that fp32 does not need.
        cast_cache = sum(params.values()) // 2 if cfg.precision in ("bf16", "fp16") else 0
        for option in options:
            components.per_image[option] = _saved_per_image(cfg, num_classes, option)
            components.fixed[option] = static + cast_cache
            if progress is not None:
                progress.advance()
        components.notes.append(
            "a CPU estimate: activations counted from autograd's saved tensors, no allocator "
            "overheads (cuDNN workspaces, fragmentation); against the allocator on one H200 "
            f"it was {CPU_ESTIMATE_ERROR}. Run gand plan on the GPU for "
            "measured numbers"
        )
    return components


def predict(components: Components, setting: Setting, ranks: int) -> int:
    """Peak bytes per rank for a setting."""
    fixed = components.fixed[setting.checkpointing]
    optimizer = sum(components.optimizer.values())
    grads = sum(components.grads.values())
    params = sum(components.params.values())
    saved = 0.0
    if setting.zero_stage >= 1:
        saved += optimizer * (1 - 1 / ranks)
    if setting.zero_stage >= 2:
        saved += grads * (1 - 1 / ranks)
    if setting.zero_stage >= 3:
        saved += params * (1 - 1 / ranks)
    if setting.offload_optimizer == "cpu":
        saved += optimizer / ranks if setting.zero_stage >= 1 else 0
    if setting.offload_params == "cpu":
        saved += params / ranks
    added = zero_buckets(components) if setting.zero_stage >= 1 else 0
    return round(fixed - saved + added + components.per_image[setting.checkpointing] * setting.micro_batch_size)


def zero_buckets(components: Components) -> int:
    """The gradient bucket ZeRO keeps on the GPU for each network (contiguous gradients): bucket_elements of it in
    fp32. Measured on one H200 (CAN-256, bf16, checkpointing, ZeRO-2 with optimizer offload, batch 64): 1.12 GiB,
    where the model without buckets said 0.92: the difference is CAN-256's 54.4 M parameters in fp32."""
    from gand.train.engine import bucket_elements

    return sum(4 * bucket_elements(size // 4) for size in components.params.values())


def relative_speed(setting: Setting) -> float:
    speed = SPEED["checkpointing"][setting.checkpointing] * SPEED["zero_stage"][setting.zero_stage]
    speed *= SPEED["offload_optimizer"][setting.offload_optimizer] * SPEED["offload_params"][setting.offload_params]
    return speed * setting.micro_batch_size / (setting.micro_batch_size + MICRO_BATCH_HALF_EFFICIENCY)


def candidates(batch_size: int, ranks: int) -> list[Setting]:
    micro_batches = [m for m in range(1, batch_size + 1) if batch_size % m == 0]
    settings = []
    for micro, option, stage in itertools.product(micro_batches, CHECKPOINTING, (0, 1, 2, 3)):
        for offload_optimizer, offload_params in (("none", "none"), ("cpu", "none"), ("cpu", "cpu")):
            if (offload_optimizer == "cpu" and stage == 0) or (offload_params == "cpu" and stage != 3):
                continue
            if stage and ranks == 1 and offload_optimizer == "none":
                continue  # partitioning over one rank saves nothing
            settings.append(Setting(micro, batch_size // micro, option, stage, offload_optimizer, offload_params))
    return settings


@dataclass
class Plan:
    components: Components
    budget: int
    ranks: int
    rows: list[tuple[Setting, int, float]]  # setting, predicted peak, relative speed; fitting ones first
    best: Setting | None


def make_plan(
    cfg: GandConfig, num_classes: int, budget_bytes: int, ranks: int, device: torch.device, show_progress: bool = False
) -> Plan:
    """Every setting's predicted peak and relative speed, and the fastest that fits `budget_bytes`; with
    `show_progress`, one progress step per probe on stderr (a probe of CAN-256 takes tens of seconds on a CPU)."""
    from gand.observability.progress import TaskProgress

    progress = TaskProgress(f"probing {cfg.model.arch} memory", len(CHECKPOINTING), "probes") if show_progress else None
    components = measure(cfg, num_classes, device, progress=progress)
    if progress is not None:
        progress.close()
    rows = [(s, predict(components, s, ranks), relative_speed(s)) for s in candidates(cfg.train.batch_size, ranks)]
    fitting = sorted((r for r in rows if r[1] <= budget_bytes), key=lambda r: (-r[2], r[1]))
    too_big = sorted((r for r in rows if r[1] > budget_bytes), key=lambda r: r[1])
    return Plan(components, budget_bytes, ranks, fitting + too_big, fitting[0][0] if fitting else None)


def format_plan(plan: Plan, cfg: GandConfig, shown: int = 8) -> str:
    c = plan.components
    lines = [
        f"{cfg.model.arch} at {cfg.data.resolution} px, batch {cfg.train.batch_size} per rank, {plan.ranks} rank(s),"
        f" {c.precision}; probe on {c.device} ({c.method})",
        "",
        f"{'component (per rank)':34} {'G':>10} {'D':>10}",
        f"{'parameters (fp32)':34} {_gib(c.params['g']):>10} {_gib(c.params['d']):>10}",
        f"{'gradients':34} {_gib(c.grads['g']):>10} {_gib(c.grads['d']):>10}",
        f"{'optimizer state':34} {_gib(c.optimizer['g']):>10} {_gib(c.optimizer['d']):>10}",
    ]
    if c.ema:
        lines.append(f"{'EMA of G':34} {_gib(c.ema):>10} {'':>10}")
    for option in CHECKPOINTING:
        lines.append(f"{'activations / image, ckpt ' + option:34} {_mib(c.per_image[option]):>21}")
    header = f"{'micro':>5} {'accum':>5} {'ckpt':>5} {'ZeRO':>4} {'offload':>9} {'peak':>10} {'speed':>6}  fits"
    lines += ["", f"budget {_gib(plan.budget)} per GPU", "", header]
    for setting, peak, speed in plan.rows[:shown]:
        offload = f"{setting.offload_optimizer}/{setting.offload_params}"
        fits = "yes" if peak <= plan.budget else "no"
        lines.append(
            f"{setting.micro_batch_size:>5} {setting.accumulation_steps:>5} {setting.checkpointing:>5} "
            f"{setting.zero_stage:>4} {offload:>9} {_gib(peak):>10} {speed:>6.2f}  {fits}"
        )
    lines.append("")
    if plan.best is None:
        lines.append("nothing fits: lower train.batch_size, use bf16/fp16, or more GPUs (ZeRO divides the state)")
    else:
        lines.append("fastest setting that fits; pass:")
        lines.append("  " + " ".join(plan.best.overrides()))
    lines += [f"note: {note}" for note in c.notes]
    lines.append("note: speed figures are estimates for ranking; measure with bench/memory.py")
    return "\n".join(lines)


# -- probes ---------------------------------------------------------------------------------------------------------
def _bytes(params) -> int:
    return sum(p.numel() * 4 for p in params)  # fp32 master copies, whatever the compute precision


def _state_tensors(optimizer_cfg) -> int:
    tensors = OPTIMIZER_STATE_TENSORS[optimizer_cfg.name]
    if optimizer_cfg.name in ("sgd", "rmsprop") and optimizer_cfg.momentum:
        tensors += 1
    return tensors


def _probe_config(cfg: GandConfig, option: str, size: int) -> GandConfig:
    memory = MemoryConfig(grad_checkpointing=option, channels_last=cfg.memory.channels_last)
    train = cfg.train.model_copy(update={"batch_size": size})
    return cfg.model_copy(
        update={
            "memory": memory,
            "train": train,
            "schedule": cfg.schedule.model_copy(update={"d_steps": 1, "g_steps": 1, "d_every": 1}),
        }
    )


def _gpu_peaks(cfg: GandConfig, num_classes: int, option: str, size: int) -> dict[str, int]:
    """The allocator's peak in each phase, D update and G update (forward, backward and optimizer step each), after
    a warm-up step that creates the optimizer state, at micro-batch `size`. The probe's networks are freed and
    collected afterwards: a reference cycle would otherwise keep their parameters and Adam state alive into the
    next probe."""
    import gc

    from gand.observability.report import StepReport
    from gand.train.engine import Engine
    from gand.train.steps import Recipe, discriminator_update, generator_update, setup_networks, synthetic_batch

    probe = _probe_config(cfg, option, size)
    engine = Engine(cfg.precision, probe.memory, size)
    g, d = setup_networks(probe, engine, num_classes)
    recipe = Recipe.from_config(probe, num_classes)
    batch = synthetic_batch(probe, size, num_classes, engine)
    peaks: dict[str, int] = {}
    for measuring in (False, True):
        for phase in ("d_update", "g_update"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            if phase == "d_update":
                discriminator_update(engine, d, g, recipe, batch, StepReport())
            else:
                generator_update(engine, g, d, recipe, size, StepReport(), batch)
            torch.cuda.synchronize()
            if measuring:
                peaks[phase] = torch.cuda.max_memory_allocated()
    del g, d, engine, batch
    gc.collect()
    torch.cuda.empty_cache()
    return peaks


def _saved_per_image(cfg: GandConfig, num_classes: int, option: str) -> int:
    """Activations per image at the larger of the two phases, from autograd's saved tensors."""
    from gand.train.steps import Recipe

    g, d = build_from_config(cfg, num_classes)
    if option in ("g", "both"):
        checkpoint_blocks(g)
    if option in ("d", "both"):
        checkpoint_blocks(d)
    recipe = Recipe.from_config(cfg, num_classes)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    per_phase = []
    for phase in ("d", "g"):
        counts = [_phase_saved_bytes(phase, g, d, recipe, cfg, size, dtype) for size in PROBE_SIZES]
        per_phase.append((counts[1] - counts[0]) / (PROBE_SIZES[1] - PROBE_SIZES[0]))
    # Backward recomputes one checkpointed block at a time (D's, then G's): the largest one is the extra peak.
    recompute = max(
        (
            _largest_block_per_image(network, g, recipe, cfg, dtype)
            for network, checkpointed in ((g, option in ("g", "both")), (d, option in ("d", "both")))
            if checkpointed
        ),
        default=0.0,
    )
    return round(max(per_phase) + recompute)


def _phase_saved_bytes(phase: str, g: nn.Module, d: nn.Module, recipe, cfg: GandConfig, size: int, dtype) -> int:
    from gand.losses import zero_centred_penalty

    real = torch.rand(size, cfg.data.channels, cfg.data.resolution, cfg.data.resolution) * 2 - 1
    z, classes = recipe.latent(size, torch.device("cpu"))
    kept = []  # outputs stay referenced while counting, so no storage is freed and its address reused
    with _SavedTensors() as saved, torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        if phase == "d":
            with torch.no_grad():
                fake = g(z, classes)
            kept += [d(real), d(fake)]
            for gamma, images in ((recipe.r1_gamma, real), (recipe.r2_gamma, fake)):
                if gamma:  # R1/R2 keep a double-backward graph of D alive until D's backward
                    kept.append(zero_centred_penalty(d, images))
        else:
            d.requires_grad_(False)
            try:
                kept.append(d(g(z, classes)))
            finally:
                d.requires_grad_(True)
    del kept
    return saved.total


def _largest_block_per_image(network: nn.Module, g: nn.Module, recipe, cfg: GandConfig, dtype) -> float:
    """During backward a checkpointed network recomputes one block at a time: the largest block's activations."""
    sizes = []
    for size in PROBE_SIZES:
        z, classes = recipe.latent(size, torch.device("cpu"))
        with torch.no_grad():
            x = g(z, classes) if network is not g else None
        inputs = _block_inputs(network, z, classes, x)
        largest = 0
        for block, block_input in zip(network.blocks, inputs, strict=False):
            original = getattr(block.forward, "args", None)
            forward = original[0] if original else block.forward  # the un-checkpointed forward
            with (
                _SavedTensors() as saved,
                torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
            ):
                forward(block_input.detach().requires_grad_(True))
            largest = max(largest, saved.total)
        sizes.append(largest)
    return (sizes[1] - sizes[0]) / (PROBE_SIZES[1] - PROBE_SIZES[0])


def _block_inputs(network: nn.Module, z, classes, images) -> list[torch.Tensor]:
    """The tensor each block receives, recorded with forward pre-hooks during one no-grad pass."""
    recorded: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda _m, args: recorded.append(args[0])) for block in network.blocks]
    try:
        with torch.no_grad():
            network(z, classes) if images is None else network(images)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


class _SavedTensors:
    """Counts the distinct storages autograd saves for backward inside the block."""

    def __init__(self):
        self._sizes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self._sizes[storage.data_ptr()] = max(self._sizes.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    @property
    def total(self) -> int:
        return sum(self._sizes.values())

    def __enter__(self) -> _SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _gib(count: float) -> str:
    return f"{count / GIB:.2f} GiB"


def _mib(count: float) -> str:
    return f"{count / 1024**2:.1f} MiB"


def parse_size(text: str) -> int:
    """'16GiB', '16G', '15.5GB', '800MiB' -> bytes (GB and G are read as GiB, as GPU sizes are quoted)."""
    units = {"gib": GIB, "gb": GIB, "g": GIB, "mib": 1024**2, "mb": 1024**2, "m": 1024**2}
    cleaned = text.strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if cleaned.endswith(unit):
            try:
                return int(float(cleaned[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"{text!r} is not a size like 16GiB or 800MiB")


def class_count(cfg: GandConfig, fallback: int) -> int:
    if not MODELS[cfg.model.arch].class_head and cfg.loss.class_mode == "none":
        return 0
    try:
        from gand.data.manifest import read_manifest

        manifest, _ = read_manifest(cfg.data.path)
        return len(manifest.class_names or []) or fallback
    except Exception:  # planning needs no data: the class count only sizes a small head
        return fallback

"""The only module that imports Accelerate and DeepSpeed: processes, devices, precision, wrapping, ZeRO.

Two ways to run the same loop:
- plain: Accelerate sets up the process group; G and D are wrapped in DDP; mixed precision is torch.autocast with
  one GradScaler per network for fp16 (skipped steps counted per network).
- DeepSpeed (memory.zero_stage 1-3): Accelerate still sets up the processes and devices, and G and D each become
  their own `deepspeed.initialize` engine. Accelerate's multi-model DeepSpeed path is not used: it imports
  transformers. Mixed precision uses DeepSpeed's `torch_autocast` mode: master weights stay fp32, convs and
  linears run in bf16/fp16, and fp16 gets a GradScaler per engine. The reason is BatchNorm: DeepSpeed's
  `bf16`/`fp16` modes cast the parameters to 16 bits, and BatchNorm then fails on its fp32 running statistics
  ("expected scalar type BFloat16 but found Float", ../DESIGN.md).

The loop talks to `Trained` networks through a few verbs: call, accumulate, backward, step, frozen, full_weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from gand.checkpoint.contents import DISCRIMINATOR, GENERATOR
from gand.config import MemoryConfig, TrackingConfig
from gand.errors import ConfigError
from gand.observability.health import gradient_stats
from gand.observability.logging import route_library_logs
from gand.observability.report import NetworkReport
from gand.observability.trackers import check_tracking, local_directory
from gand.train.launch import ensure_process_group_variables
from gand.train.memory import as_channels_last, checkpoint_blocks, to_channels_last

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_precision(device_type: str, capability: tuple[int, int] | None) -> tuple[str, str]:
    """`precision: auto` for a device: (precision, why). bf16 needs compute capability 8.0 (A100, L4, A10G, H100,
    H200); 7.x (V100, T4: Colab) has fp16 tensor cores but no bf16; older GPUs and CPUs train in fp32."""
    if device_type != "cuda" or capability is None:
        return "fp32", f"{device_type}: no tensor cores, mixed precision would only be emulated"
    if capability >= (8, 0):
        return "bf16", f"compute capability {capability[0]}.{capability[1]} has bf16 tensor cores"
    if capability >= (7, 0):
        return "fp16", f"compute capability {capability[0]}.{capability[1]} has fp16 but no bf16 tensor cores"
    return "fp32", f"compute capability {capability[0]}.{capability[1]} has no tensor cores"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision to train in: `auto` chosen for the device, an explicit one checked against it. Raises
    ConfigError for bf16 on a GPU without it (emulated bf16 is several times slower than fp32)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if precision == "auto":
        return choose_precision(device.type, capability)
    if precision == "bf16" and capability is not None and capability < (8, 0):
        raise ConfigError(
            f"precision: bf16 needs compute capability 8.0 or newer; this GPU has "
            f"{capability[0]}.{capability[1]} (e.g. a T4): use fp16, or auto"
        )
    return precision, "set in the config"


log = structlog.get_logger("gand.engine")


@dataclass
class Trained:
    """One network in training: what to call, its optimizer, its loss scaler, and its counters."""

    name: str  # GENERATOR | DISCRIMINATOR: also the network's key in a checkpoint (gand.checkpoint.contents)
    module: nn.Module  # the pure model
    model: Any  # what forward calls: the module, DDP(module), or a DeepSpeed engine
    optimizer: Any
    scaler: torch.amp.GradScaler | None = None
    skipped: torch.Tensor | int = 0  # fp16 steps skipped because of inf/nan gradients (a device counter)

    @property
    def skipped_steps(self) -> int:
        return int(self.skipped)  # reads the device counter: logging steps and saves only

    def __call__(self, *inputs: Any) -> Any:
        return self.model(*inputs)  # precision: the caller's `engine.autocast()` region around the whole update


class Engine:
    """Accelerate (DDP) engine; `DeepSpeedEngine` overrides what ZeRO does differently."""

    def __init__(
        self,
        precision: str = "fp32",
        memory: MemoryConfig | None = None,
        batch_size: int = 1,
        tracking: TrackingConfig | None = None,
        tracking_dir: str | None = None,
    ):
        self.memory = memory or MemoryConfig()
        # cpu=True where there is no GPU: Accelerate only sets up a gloo process group (MULTI_CPU) when told.
        # Mixed precision is ours (per-network scalers), so Accelerate's stays off. Trackers are Accelerate's
        # (gand.observability.trackers starts them on the main rank).
        log_with = list(tracking.log_with) if tracking is not None and tracking.log_with else None
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision="no",
            log_with=log_with,
            project_dir=local_directory(tracking_dir) if log_with and tracking_dir else None,
        )
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        micro = self.memory.micro_batch or batch_size
        self.micro_batch_size = micro
        self.accumulation_steps = batch_size // micro
        self.precision, reason = resolve_precision(precision, self.device)
        self._autocast_dtype = AUTOCAST_DTYPES[self.precision]
        if precision == "auto":
            log.info("precision_chosen", precision=self.precision, reason=reason)
        on_gpu = self.device.type == "cuda"
        # GPU defaults users should not have to know: channels-last convolutions (tensor cores read NHWC) and
        # cuDNN's autotuner (the shapes never change during a run).
        self.channels_last = self.memory.channels_last if self.memory.channels_last is not None else on_gpu
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        self._control_group = self._host_group()

    def _host_group(self) -> Any:
        """A gloo group for the small agreements of every step (stop, save, roll back, generation): on NCCL the
        default group would make each of them a host-device synchronisation."""
        dist = torch.distributed
        if self.world_size == 1 or not dist.is_initialized() or dist.get_backend() == "gloo":
            return None
        return dist.new_group(backend="gloo")

    @property
    def fused_optimizers(self) -> bool:
        """Whether Adam should use its fused kernel: one launch per step, its step counter on the device (the
        default keeps it on the host and reads it back per tensor), and no host sync with an fp16 scaler."""
        return self.device.type in ("cuda", "cpu")

    def place(self, *modules: nn.Module) -> None:
        """Move pure models to the training device before their optimizers are built (fused kernels check)."""
        for module in modules:
            module.to(self.device)

    # -- set-up -------------------------------------------------------------------------------------------------
    def setup(
        self, generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer
    ) -> tuple[Trained, Trained]:
        """Memory savers, devices and process-group wrapping for both networks."""
        self._apply_memory_savers(generator, discriminator)
        g_model, d_model, opt_g, opt_d = self.accelerator.prepare(generator, discriminator, opt_g, opt_d)
        trained = []
        for name, module, model, optimizer in (
            (GENERATOR, generator, g_model, opt_g),
            (DISCRIMINATOR, discriminator, d_model, opt_d),
        ):
            scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
            model = torch.compile(model) if self.memory.compile else model
            trained.append(Trained(name, module, model, optimizer, scaler))
        return trained[0], trained[1]

    def _apply_memory_savers(self, generator: nn.Module, discriminator: nn.Module) -> None:
        which = self.memory.grad_checkpointing
        if which in ("g", "both"):
            checkpoint_blocks(generator)
        if which in ("d", "both"):
            checkpoint_blocks(discriminator)
        if self.channels_last:
            to_channels_last(generator)
            to_channels_last(discriminator)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around one whole network update (its forwards and loss, not its backward): weights are
        cast once per update instead of once per call, which autocast's cast cache only keeps within a region."""
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def format_like_trained(self, module: nn.Module) -> None:
        """A copy of a trained network (the EMA generator) in the memory format the engine gave the original."""
        if self.channels_last:
            to_channels_last(module)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the engine's memory format: real and generated images alike (a no-op when already so)."""
        return as_channels_last(images) if self.channels_last else images

    # -- one update: micro-batches, backward, step -----------------------------------------------------------
    @contextlib.contextmanager
    def accumulate(self, net: Trained, last: bool) -> Iterator[None]:
        """Around one micro-batch's forward and backward: DDP syncs gradients only on the last one."""
        if last or not hasattr(net.model, "no_sync"):
            yield
        else:
            with net.model.no_sync():
                yield

    def backward(self, net: Trained, loss: torch.Tensor) -> None:
        loss = loss / self.accumulation_steps  # the update is the mean over the whole batch
        if net.scaler is not None:
            net.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, net: Trained) -> None:
        """Apply the update accumulated over the micro-batches."""
        if net.scaler is not None:
            # The scale drops only on a skipped step. Compared on the device (GradScaler's get_scale() would read
            # it back every step); with a fused optimizer the scaler's own inf check stays on the device too.
            before = net.scaler._scale.clone() if net.scaler._scale is not None else None
            net.scaler.step(net.optimizer)
            net.scaler.update()
            if before is not None:
                net.skipped = net.skipped + (net.scaler._scale < before).int()
        else:
            net.optimizer.step()
        net.optimizer.zero_grad(set_to_none=True)

    def loss_scale(self, net: Trained) -> float | None:
        return net.scaler.get_scale() if net.scaler is not None else None

    def gradient_stats(self, net: Trained, report: NetworkReport) -> None:
        """Between backward and step: the gradient norm and, per layer group, the share of vanishing entries.

        With fp16 the gradients are still scaled here, so they are unscaled first (GradScaler allows that once
        per step, and step() then skips its own unscale)."""
        if net.scaler is not None:
            net.scaler.unscale_(net.optimizer)
        report.grad_norm, report.vanishing = gradient_stats(net.module)

    def learning_rate(self, net: Trained) -> float:
        return float(net.optimizer.param_groups[0]["lr"])

    @contextlib.contextmanager
    def frozen(self, net: Trained) -> Iterator[Any]:
        """The network to call in the other network's step: no parameter gradients, no gradient sync.

        Gradients still flow through it to its input. Calling the bare module keeps DDP from waiting for gradients
        that will never come; requires_grad=False is what ZeRO needs (../DESIGN.md).
        """
        flags = [p.requires_grad for p in net.module.parameters()]
        net.module.requires_grad_(False)
        target = self._frozen_target(net)
        try:
            yield target
        finally:
            for param, flag in zip(net.module.parameters(), flags, strict=True):
                param.requires_grad_(flag)

    def _frozen_target(self, net: Trained) -> Any:
        return net.module

    @contextlib.contextmanager
    def full_weights(self, net: Trained) -> Iterator[nn.Module]:
        """The module with all of its parameters present (ZeRO-3 gathers them; collective there)."""
        yield net.module

    @torch.no_grad()
    def clamp_parameters(self, net: Trained, bound: float) -> None:
        """WGAN weight clipping of every parameter, wherever its master copy lives."""
        for param in net.module.parameters():
            param.clamp_(-bound, bound)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def consolidated_state_dict(self, net: Trained) -> dict[str, torch.Tensor]:
        """fp32 weights and buffers of the whole network (collective under ZeRO-3)."""
        with self.full_weights(net) as module:
            return {
                key: value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()
                for key, value in module.state_dict().items()
            }

    def optimizer_state(self, net: Trained) -> tuple[dict[str, Any], bool]:
        """What to save to resume this network's optimisation (optimizer, loss scaler, skipped steps), and whether
        each rank holds its own part."""
        state = {"optimizer": net.optimizer.state_dict(), "skipped_steps": net.skipped_steps}
        if net.scaler is not None:
            state["scaler"] = net.scaler.state_dict()
        return state, False

    def load_network(self, net: Trained, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        """Consolidated weights and `optimizer_state()`'s state into a network already set up: every way back to a
        checkpoint (resume, roll-back after NaN, the collapse guard's) comes through here."""
        net.module.load_state_dict(weights)
        self._load_optimizer_state(net, optimizer_state)

    def _load_optimizer_state(self, net: Trained, state: dict[str, Any]) -> None:
        """The optimiser and scaler state (after setup)."""
        with configured_hyperparameters(net):
            net.optimizer.load_state_dict(state["optimizer"])
        net.skipped = int(state.get("skipped_steps", 0))
        if net.scaler is not None and "scaler" in state:
            net.scaler.load_state_dict(state["scaler"])

    # -- collectives -------------------------------------------------------------------------------------------------
    def mean_across_ranks(self, values: torch.Tensor) -> list[float]:
        """Each entry's mean over ranks, in one collective, read back to the host in one copy (a sync)."""
        values = values.detach().float().to(self.device)
        if self.world_size > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return values.tolist()

    def any_across_ranks(self, flags: Sequence[bool]) -> list[bool]:
        """Each flag, true if it is true on any rank (collective): how ranks agree to stop, save or roll back.
        Host values over a host (gloo) group: no device synchronisation."""
        if self.world_size == 1:
            return list(flags)
        device = "cpu" if self._control_group is not None else self.device
        tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX, group=self._control_group)
        return [bool(value) for value in tensor.tolist()]

    def from_rank_zero(self, value: int) -> int:
        """Rank 0's value on every rank (collective, on the host group)."""
        if self.world_size == 1:
            return value
        device = "cpu" if self._control_group is not None else self.device
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.broadcast(tensor, src=0, group=self._control_group)
        return int(tensor.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        return gather_object([obj])

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """The end of one training run. The process group outlives it (a notebook may train again); the
        command line tears it down with shutdown_distributed() before the process exits."""
        self.barrier()


@contextlib.contextmanager
def configured_hyperparameters(net: Trained) -> Iterator[None]:
    """Loading optimizer state also loads its learning rate and betas; the config's win, so that a run resumed
    with a new `optim.g.lr` uses it (gand has no LR schedules whose progress that would undo)."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in net.optimizer.param_groups]
    yield
    for group, settings in zip(net.optimizer.param_groups, configured, strict=True):
        changed = {k: (group.get(k), v) for k, v in settings.items() if group.get(k) != v}
        group.update(settings)
        if changed and any(k in ("lr", "betas", "momentum", "alpha", "weight_decay") for k in changed):
            log.info(
                "optimizer_settings_from_config",
                network=net.name,
                changed={k: {"saved": str(a), "now": str(b)} for k, (a, b) in changed.items()},
            )


# -- DeepSpeed ZeRO ------------------------------------------------------------------------------------------------
class DeepSpeedEngine(Engine):
    """G and D as two DeepSpeed engines (ZeRO 1-3, optional CPU offload), on Accelerate's process group."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed's forward applies its own torch_autocast

    def __init__(
        self,
        precision: str,
        memory: MemoryConfig,
        batch_size: int,
        tracking: TrackingConfig | None = None,
        tracking_dir: str | None = None,
    ):
        ensure_process_group_variables()
        super().__init__(precision, memory, batch_size, tracking, tracking_dir)
        self.channels_last = False  # DeepSpeed's flat parameter buffers are contiguous (MemoryConfig refuses true)
        refuse_zero_without_ranks(memory, self.world_size)
        deepspeed = import_deepspeed()
        if deepspeed is None:
            raise ConfigError("memory.zero_stage > 0 needs DeepSpeed: pip install 'gand[deepspeed]'")
        self.deepspeed = deepspeed
        deepspeed.init_distributed(
            dist_backend="nccl" if self.device.type == "cuda" else "gloo", auto_mpi_discovery=False
        )

    def setup(self, generator, discriminator, opt_g, opt_d) -> tuple[Trained, Trained]:
        self._apply_memory_savers(generator, discriminator)
        trained = []
        for name, module, optimizer in ((GENERATOR, generator, opt_g), (DISCRIMINATOR, discriminator, opt_d)):
            config = deepspeed_config(
                self.memory,
                self.precision,
                self.micro_batch_size,
                self.accumulation_steps,
                cuda=self.device.type == "cuda",
                parameters=sum(p.numel() for p in module.parameters()),
            )
            optimizer = self._host_optimizer(optimizer)
            engine, ds_optimizer, _, _ = self.deepspeed.initialize(
                model=module, optimizer=optimizer, config=config, dist_init_required=False
            )
            model = engine
            if self.memory.compile:
                engine.compile()
            trained.append(Trained(name, module, model, ds_optimizer))
        log.info(
            "deepspeed_ready",
            zero_stage=self.memory.zero_stage,
            precision=self.precision,
            micro_batch_size=self.micro_batch_size,
            accumulation_steps=self.accumulation_steps,
            offload_optimizer=self.memory.offload_optimizer,
            offload_params=self.memory.offload_params,
        )
        return trained[0], trained[1]

    def _host_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """With the optimizer state offloaded, Adam runs on the CPU: DeepSpeed's vectorised CPU Adam (the same update
        as torch's Adam, several times faster there) instead of torch's. Its C++ op is prebuilt in the image and
        built on first use elsewhere (about half a minute); if it cannot be built, torch's Adam stays (a warning)."""
        if self.memory.offload_optimizer != "cpu" or type(optimizer) is not torch.optim.Adam:
            return optimizer
        group = optimizer.param_groups[0]
        params = [param for each in optimizer.param_groups for param in each["params"]]
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(
                params,
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                adamw_mode=False,
            )
        except Exception as err:  # a missing compiler or headers: slower, not wrong
            log.warning("deepspeed_cpu_adam_unavailable", error=str(err)[:300], using="torch.optim.Adam on the CPU")
            return optimizer

    @contextlib.contextmanager
    def accumulate(self, net: Trained, last: bool) -> Iterator[None]:
        yield  # DeepSpeed counts micro-steps itself (gradient_accumulation_steps)

    def backward(self, net: Trained, loss: torch.Tensor) -> None:
        scaler = self._scaler(net)
        scale_before = scaler.get_scale() if scaler is not None else None
        net.model.backward(loss)  # divides by gradient_accumulation_steps itself
        net.model.step()  # a no-op until the last micro-batch of the update
        if scaler is not None:
            net.skipped = net.skipped_steps + int(scaler.get_scale() < scale_before)  # drops only on a skipped step

    def step(self, net: Trained) -> None:
        pass  # done by DeepSpeed at the accumulation boundary, inside backward()

    def _scaler(self, net: Trained) -> torch.amp.GradScaler | None:
        return getattr(net.optimizer, "torch_autocast_gradscaler", None) or getattr(
            net.model, "torch_autocast_z0_gradscaler", None
        )

    def loss_scale(self, net: Trained) -> float | None:
        scaler = self._scaler(net)
        return scaler.get_scale() if scaler is not None else None

    def gradient_stats(self, net: Trained, report: NetworkReport) -> None:
        # ZeRO keeps gradients in flat partitions (and steps inside backward): per-layer statistics are not
        # available here, so only the global norm DeepSpeed computed at its last step is reported.
        norm = net.model.get_global_grad_norm() if hasattr(net.model, "get_global_grad_norm") else None
        if norm is not None:
            report.grad_norm = torch.as_tensor(float(norm))

    def _frozen_target(self, net: Trained) -> Any:
        return net.model  # the engine: under ZeRO-3 its hooks gather the partitioned weights

    @contextlib.contextmanager
    def full_weights(self, net: Trained) -> Iterator[nn.Module]:
        if self.memory.zero_stage < 3:
            yield net.module
            return
        with self.deepspeed.zero.GatheredParameters(list(net.module.parameters()), modifier_rank=None):
            yield net.module

    @torch.no_grad()
    def clamp_parameters(self, net: Trained, bound: float) -> None:
        # The optimiser's fp32 master partitions are the truth (the next step copies them back to the
        # module), so they are clamped as well as the module's working copies.
        for flat in _master_partitions(net.optimizer):
            flat.clamp_(-bound, bound)
        for param in net.module.parameters():
            working = getattr(param, "ds_tensor", None)
            (working if working is not None else param).clamp_(-bound, bound)

    def optimizer_state(self, net: Trained) -> tuple[dict[str, Any], bool]:
        state: dict[str, Any] = {"optimizer": net.optimizer.state_dict(), "skipped_steps": net.skipped_steps}
        scaler = self._scaler(net)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()  # not part of DeepSpeed's own optimizer state
        return state, True  # ZeRO partitions optimizer state: every rank saves its own

    def load_network(self, net: Trained, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        # Parameters come back from the optimiser's fp32 master partitions (load_from_fp32_weights); buffers
        # (BatchNorm statistics) are not partitioned, so they load into the module directly.
        buffers = {name for name, _ in net.module.named_buffers()}
        net.module.load_state_dict({k: v for k, v in weights.items() if k in buffers}, strict=False)
        self._load_optimizer_state(net, optimizer_state)

    def _load_optimizer_state(self, net: Trained, state: dict[str, Any]) -> None:
        partitions = [None] * self.world_size
        partitions[self.rank] = state["optimizer"]
        # load_from_fp32_weights: the saved fp32 master partition, not the working copy, becomes the weights
        with configured_hyperparameters(net):
            net.optimizer.load_state_dict(partitions, load_optimizer_states=True, load_from_fp32_weights=True)
        net.skipped = int(state.get("skipped_steps", 0))
        scaler = self._scaler(net)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])


def refuse_zero_without_ranks(memory: MemoryConfig, world_size: int) -> None:
    """ZeRO on one rank without offload: nothing to partition, only DeepSpeed's buffers added. Raises ConfigError."""
    offloads = memory.offload_optimizer != "none" or memory.offload_params != "none"
    if world_size == 1 and memory.zero_stage and not offloads:
        raise ConfigError(
            f"memory.zero_stage: {memory.zero_stage} on one rank: ZeRO splits optimizer state, gradients and "
            "parameters across ranks, and on one rank there is nothing to split, while DeepSpeed's buffers add memory "
            "(CAN-256 at batch 64 on an H200: 4.95 GiB with ZeRO-2 against 1.45 GiB without). Use memory.zero_stage: 0 "
            "with bf16, memory.grad_checkpointing and memory.micro_batch (`gand plan CONFIG --gpu-mem N` picks), or "
            "keep ZeRO and add memory.offload_optimizer: cpu to hold the optimizer state in host RAM"
        )


def _master_partitions(optimizer: Any) -> list[torch.Tensor]:
    for attribute in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        partitions = getattr(optimizer, attribute, None)
        if partitions:
            return list(partitions)
    return []


def bucket_elements(parameters: int) -> int:
    """Communication bucket size for one network, in elements: the network itself, at least 2**20 (few messages for
    small networks) and at most DeepSpeed's default 5e8. The default holds 1.9 GiB in fp32 per bucket, more than
    CAN-256's whole D, and ZeRO allocates such buckets per communication dtype: on one H200 it lifted CAN-256's peak
    from 1.45 to 4.95 GiB (../shared/measurements/h200-2026-11-30.md)."""
    return int(max(2**20, min(500_000_000, parameters)))


def deepspeed_config(
    memory: MemoryConfig,
    precision: str,
    micro_batch_size: int,
    accumulation_steps: int,
    cuda: bool,
    parameters: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config gand passes to one network's engine: the memory.* settings over an optional tuning JSON,
    with bucket sizes from the network's `parameters` unless the JSON sets them."""
    config: dict[str, Any] = {}
    if memory.deepspeed_config is not None:
        try:
            config = json.loads(Path(memory.deepspeed_config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"memory.deepspeed_config: cannot read {memory.deepspeed_config}: {err}") from None
    zero = dict(config.get("zero_optimization", {}))
    if "stage" in zero and zero["stage"] != memory.zero_stage:
        raise ConfigError(
            f"memory.deepspeed_config sets ZeRO stage {zero['stage']} but memory.zero_stage is {memory.zero_stage};"
            " leave the stage out of the JSON"
        )
    zero["stage"] = memory.zero_stage
    if parameters is not None:
        bucket = bucket_elements(parameters)
        for key in ("reduce_bucket_size", "allgather_bucket_size") + (
            ("stage3_prefetch_bucket_size",) if memory.zero_stage == 3 else ()
        ):
            zero.setdefault(key, bucket)
    if memory.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if memory.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    config.update(
        {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": accumulation_steps,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,  # gand's own Adam / RMSprop / SGD
            "zero_force_ds_cpu_optimizer": False,  # offload works with them too (DeepSpeedCPUAdam is faster)
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
    )
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    if precision != "fp32":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if precision == "bf16" else "float16"}
    for section in ("fp16", "bf16"):
        if config.get(section, {}).get("enabled"):
            raise ConfigError(f"memory.deepspeed_config: leave {section!r} out; gand sets precision (see README)")
    return config


def build_engine(
    precision: str,
    memory: MemoryConfig,
    batch_size: int,
    tracking: TrackingConfig | None = None,
    tracking_dir: str | None = None,
) -> Engine:
    """The engine for a run: DeepSpeed's when the memory settings ask for ZeRO, else Accelerate's DDP. `tracking`
    and `tracking_dir` set up Accelerate's trackers (started later by gand.observability.trackers)."""
    if tracking is not None and tracking.log_with:
        check_tracking(tracking.log_with, tracking_dir)  # before any process group: a missing package is a config error
    if memory.uses_deepspeed:
        return DeepSpeedEngine(precision, memory, batch_size, tracking, tracking_dir)
    return Engine(precision, memory, batch_size, tracking, tracking_dir)


def import_deepspeed():
    """DeepSpeed, quiet and with its log lines routed through gand's logging; None when it is not installed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else its import warns that it guessed the CPU
    try:
        import deepspeed
    except ImportError:
        return None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    route_library_logs()  # DeepSpeed installs its own stdout handler on import
    return deepspeed


def deepspeed_safe_globals() -> list[type]:
    """DeepSpeed's plain-data classes inside its optimizer state, allowed for torch.load(weights_only=True)."""
    if import_deepspeed() is None:
        return []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, ZeroStageEnum, fragment_address]

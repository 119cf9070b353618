"""What a training step reports, typed: device tensors while the step runs, numbers once per logging step.

A step fills a `StepReport` (each network's loss terms; on logging steps also D's outputs and the gradient
statistics) without reading anything back from the device. At a logging step `StepReport.read` stacks every
value into one tensor, averages it over the ranks in one collective and copies it to the host in one transfer: the
only host-device synchronisation that step adds. The result, a `LoggedStep`, is what the log line, the Prometheus
exporter (`gand.observability.metrics`) and the loss history (`gand.observability.curves`) take; none of them
parses names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

NETWORK_TAGS = {"generator": "g", "discriminator": "d"}


@dataclass
class NetworkReport:
    """One network's update: loss terms (batch means, detached), and on logging steps its gradient statistics."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # term (adv, class, gp, ...) -> 0-d tensor
    grad_norm: torch.Tensor | None = None  # L2 norm of the whole gradient (before clipping or the step)
    vanishing: dict[str, torch.Tensor] = field(default_factory=dict)  # layer group -> share of |grad| < 0.01

    def finite(self) -> torch.Tensor:
        """A 0-d bool tensor on the device: every loss term is finite (nothing is read back)."""
        values = [value.detach().float().reshape(()) for value in self.losses.values()]
        return torch.isfinite(torch.stack(values)).all() if values else torch.ones((), dtype=torch.bool)


@dataclass(frozen=True)
class DiscriminatorOutputs:
    """Mean D(x) and D(G(z)) as probabilities, and D's accuracy on each (tensors, or floats once read)."""

    real: torch.Tensor | float
    fake: torch.Tensor | float
    accuracy_real: torch.Tensor | float
    accuracy_fake: torch.Tensor | float


@dataclass(frozen=True)
class DataCounts:
    """What the loop and the loader workers counted since the previous logging step (this rank, host side)."""

    wait_seconds: float = 0.0  # the loop waiting for batches
    batches: int = 0
    shards_opened: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason (unknown_class, undecodable) -> samples


@dataclass(frozen=True)
class NetworkNumbers:
    loss: float  # the sum of the terms
    terms: dict[str, float]
    grad_norm: float | None
    vanishing: dict[str, float]
    learning_rate: float
    loss_scale: float | None = None  # fp16 only
    skipped_steps: int | None = None  # fp16 only: steps skipped for inf/NaN gradients, whole run


@dataclass(frozen=True)
class LoggedStep:
    """A logging step in numbers, averaged over ranks (data counts summed over ranks)."""

    step: int
    images_seen: int
    epoch: int
    images_per_second: float
    generator: NetworkNumbers
    discriminator: NetworkNumbers | None  # None when D did not train on this step (schedule.d_every)
    d_outputs: DiscriminatorOutputs | None
    d_dominating: bool | None
    data: DataCounts

    def networks(self) -> dict[str, NetworkNumbers]:
        return _present(self.generator, self.discriminator)

    def losses(self) -> dict[str, float]:
        """g, d (totals) and each term, e.g. d_adv, d_gp, g_ambiguity: the names of the loss history."""
        named = {NETWORK_TAGS[name]: numbers.loss for name, numbers in self.networks().items()}
        for name, numbers in self.networks().items():
            named.update({f"{NETWORK_TAGS[name]}_{term}": value for term, value in numbers.terms.items()})
        return named

    def statistics(self) -> dict[str, float]:
        """Health statistics under the names the loss history keeps (`gand plot` reads them)."""
        stats: dict[str, float] = {}
        if self.d_outputs is not None:
            out = self.d_outputs
            stats.update(
                {"d_real": out.real, "d_fake": out.fake, "acc_real": out.accuracy_real, "acc_fake": out.accuracy_fake}
            )
        for name, numbers in self.networks().items():
            tag = NETWORK_TAGS[name]
            if numbers.grad_norm is not None:
                stats[f"grad_norm_{tag}"] = numbers.grad_norm
            stats.update({f"vanishing_{tag}/{group}": share for group, share in numbers.vanishing.items()})
        return stats

    def log_fields(self) -> dict[str, float | int]:
        """The `train_step` log line's fields."""
        fields: dict[str, float | int] = {f"loss_{name}": round(value, 4) for name, value in self.losses().items()}
        if self.d_outputs is not None:
            fields.update(d_real=round(self.d_outputs.real, 3), d_fake=round(self.d_outputs.fake, 3))
        fields["images_per_second"] = round(self.images_per_second, 1)
        for name, numbers in self.networks().items():
            if numbers.loss_scale is not None:
                fields[f"loss_scale_{NETWORK_TAGS[name]}"] = numbers.loss_scale
                fields[f"skipped_steps_{NETWORK_TAGS[name]}"] = numbers.skipped_steps or 0
        return fields


@dataclass
class StepReport:
    """What one step's updates leave behind on the device; filled by `gand.train.steps`."""

    generator: NetworkReport = field(default_factory=NetworkReport)
    discriminator: NetworkReport | None = None
    d_outputs: DiscriminatorOutputs | None = None
    detailed: bool = False  # a logging step: gather D's outputs and gradient statistics too
    penalties_due: bool = True  # a step on which lazy R1/R2 penalties run (loss.penalty_every)

    def _networks(self) -> dict[str, NetworkReport]:
        return _present(self.generator, self.discriminator)

    def read(
        self, mean_across_ranks: Callable[[torch.Tensor], list[float]], world_size: int, host: HostNumbers
    ) -> LoggedStep:
        """Every value in one collective and one device-to-host copy."""
        slots: list[torch.Tensor] = []

        def put(value: torch.Tensor | float) -> int:
            slots.append(torch.as_tensor(value).detach().float().reshape(()))
            return len(slots) - 1

        layout = {}
        for name, net in self._networks().items():
            layout[name] = (
                {term: put(value) for term, value in net.losses.items()},
                None if net.grad_norm is None else put(net.grad_norm),
                {group: put(share) for group, share in net.vanishing.items()},
            )
        outputs = None
        if self.d_outputs is not None:
            out = self.d_outputs
            outputs = [put(v) for v in (out.real, out.fake, out.accuracy_real, out.accuracy_fake)]
        data = host.data
        reasons = sorted(data.skipped)
        data_slots = [put(data.wait_seconds), put(data.batches), put(data.shards_opened)]
        data_slots += [put(data.skipped[reason]) for reason in reasons]
        device = slots[0].device if slots else torch.device("cpu")
        values = mean_across_ranks(torch.stack([slot.to(device) for slot in slots]))

        networks = {}
        for name, (terms, norm, vanishing) in layout.items():
            term_values = {term: values[i] for term, i in terms.items()}
            networks[name] = NetworkNumbers(
                loss=sum(term_values.values()),
                terms=term_values,
                grad_norm=None if norm is None else values[norm],
                vanishing={group: values[i] for group, i in vanishing.items()},
                learning_rate=host.learning_rates[name],
                loss_scale=host.loss_scales.get(name),
                skipped_steps=host.skipped_steps.get(name),
            )
        d_outputs = DiscriminatorOutputs(*(values[i] for i in outputs)) if outputs is not None else None
        summed = [round(values[i] * world_size) for i in data_slots[1:]]  # counts: every rank's, added up
        counts = DataCounts(
            wait_seconds=values[data_slots[0]],
            batches=round(values[data_slots[1]]),  # per rank (ranks draw in lockstep)
            shards_opened=summed[1],
            skipped={reason: summed[2 + k] for k, reason in enumerate(reasons)},
        )
        return LoggedStep(
            step=host.step,
            images_seen=host.images_seen,
            epoch=host.epoch,
            images_per_second=host.images_per_second,
            generator=networks["generator"],
            discriminator=networks.get("discriminator"),
            d_outputs=d_outputs,
            d_dominating=host.d_dominating(d_outputs) if d_outputs is not None else None,
            data=counts,
        )


def _present(generator, discriminator) -> dict:
    """The networks that updated this step, by name (D may skip steps: schedule.d_every)."""
    return (
        {"generator": generator} if discriminator is None else {"generator": generator, "discriminator": discriminator}
    )


@dataclass(frozen=True)
class HostNumbers:
    """What the loop knows on the host at a logging step, beside the report's tensors."""

    step: int
    images_seen: int
    epoch: int
    images_per_second: float
    data: DataCounts
    learning_rates: dict[str, float]
    loss_scales: dict[str, float] = field(default_factory=dict)
    skipped_steps: dict[str, int] = field(default_factory=dict)
    d_dominating: Callable[[DiscriminatorOutputs], bool] = lambda outputs: False

"""The one place gand talks to prometheus_client: a /metrics endpoint with the run's progress and losses.

Gauges carry absolute values (images seen, step) so they stay right across restarts and resumes.
"""

from __future__ import annotations

import time

import structlog
from prometheus_client import CollectorRegistry, Gauge, Info, start_http_server

from gand import __version__

log = structlog.get_logger("gand.metrics")


class TrainingMetrics:
    """Training progress for Prometheus. With no port it records nothing and serves nothing."""

    def __init__(self, port: int | None, run_name: str):
        self.enabled = port is not None
        if not self.enabled:
            return
        self.registry = CollectorRegistry()
        Info("gand_build", "gand version", registry=self.registry).info({"version": __version__, "run": run_name})
        self.steps = Gauge("gand_train_steps", "Optimisation steps done", registry=self.registry)
        self.images_seen = Gauge("gand_train_images_seen", "Real images consumed, all ranks", registry=self.registry)
        self.epoch = Gauge("gand_train_epoch", "Current data epoch", registry=self.registry)
        self.images_per_second = Gauge(
            "gand_train_images_per_second", "Training throughput, all ranks", registry=self.registry
        )
        self.last_step = Gauge(
            "gand_train_last_step_timestamp_seconds",
            "Unix time of the last finished step",
            registry=self.registry,
        )
        self.loss = Gauge(
            "gand_train_loss", "Latest loss per network and term (total, adv, class, style, ambiguity, gp)",
            ["network", "term"], registry=self.registry,
        )  # fmt: skip
        self.checkpoint_time = Gauge(
            "gand_checkpoint_last_commit_timestamp_seconds",
            "Unix time of the last committed checkpoint",
            registry=self.registry,
        )
        try:
            self.server, _ = start_http_server(port, registry=self.registry)
        except OSError as err:  # a busy port must not stop a training run
            log.warning("metrics_port_unavailable", port=port, error=str(err))
            self.enabled = False
            return
        self.port = self.server.server_port
        log.info("metrics_serving", port=self.port, path="/metrics")

    def record_step(self, step: int, images_seen: int, epoch: int, losses: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        self.steps.set(step)
        self.images_seen.set(images_seen)
        self.epoch.set(epoch)
        self.images_per_second.set(rate)
        self.last_step.set(time.time())
        for name, value in losses.items():  # "g", "d" are totals; "d_gp" is D's gradient-penalty term
            network, _, term = name.partition("_")
            self.loss.labels(network=network, term=term or "total").set(value)

    def record_checkpoint(self) -> None:
        if self.enabled:
            self.checkpoint_time.set(time.time())

    def close(self) -> None:
        if self.enabled:
            self.server.shutdown()
            self.server.server_close()

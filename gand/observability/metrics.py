"""The one place gand talks to prometheus_client: a /metrics endpoint with the run's progress and losses.

Gauges carry absolute values (images seen, step) so they stay right across restarts and resumes.
"""

from __future__ import annotations

import time

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

from gand import __version__

log = structlog.get_logger("gand.metrics")


def _serve(registry: CollectorRegistry, port: int):
    """An HTTP /metrics server on `port` (0: any free port), or None when the port is taken."""
    try:
        server, _ = start_http_server(port, registry=registry)
    except OSError as err:  # a busy port must not stop training or packing
        log.warning("metrics_port_unavailable", port=port, error=str(err))
        return None
    log.info("metrics_serving", port=server.server_port, path="/metrics")
    return server


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
        self.checkpoint_images = Gauge("gand_checkpoint_last_commit_images", "images_seen of the last commit",
                                       registry=self.registry)  # fmt: skip
        self.commits = Counter("gand_checkpoint_commits", "Checkpoints committed", registry=self.registry)
        self.upload_failures = Counter(
            "gand_checkpoint_upload_failures",
            "Failed storage requests while uploading checkpoints (each retry counts)",
            registry=self.registry,
        )
        self.uploads_failed = Counter("gand_checkpoint_uploads_abandoned",
                                      "Checkpoint uploads given up after retries", registry=self.registry)  # fmt: skip
        self.uploads_pending = Gauge("gand_checkpoint_uploads_pending", "Snapshots uploading or waiting to",
                                     registry=self.registry)  # fmt: skip
        self.stall = Gauge("gand_checkpoint_stall_seconds", "Training stall of the last save (the synchronous part)",
                           registry=self.registry)  # fmt: skip
        self.upload_seconds = Gauge("gand_checkpoint_upload_seconds", "Duration of the last committed upload",
                                    registry=self.registry)  # fmt: skip
        self.rollbacks = Counter("gand_train_rollbacks", "Roll-backs to the last commit after NaN/Inf losses",
                                 registry=self.registry)  # fmt: skip
        self._failed_attempts_seen = 0
        self.server = _serve(self.registry, port)
        self.enabled = self.server is not None
        self.port = self.server.server_port if self.server is not None else None

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

    def record_snapshot(self, stall_seconds: float) -> None:
        if self.enabled:
            self.stall.set(stall_seconds)

    def record_commit(self, result) -> None:
        """A finished upload that committed (an UploadResult)."""
        if not self.enabled:
            return
        self.commits.inc()
        self.checkpoint_time.set(time.time())
        self.checkpoint_images.set(int(result.name.removeprefix("ckpt-")))
        self.upload_seconds.set(result.seconds)

    def record_uploads(self, pending: int, failed_attempts_total: int, abandoned: int = 0) -> None:
        if not self.enabled:
            return
        self.uploads_pending.set(pending)
        self.upload_failures.inc(max(0, failed_attempts_total - self._failed_attempts_seen))
        self._failed_attempts_seen = max(self._failed_attempts_seen, failed_attempts_total)
        if abandoned:
            self.uploads_failed.inc(abandoned)

    def record_rollback(self) -> None:
        if self.enabled:
            self.rollbacks.inc()

    def close(self) -> None:
        if self.enabled:
            self.server.shutdown()
            self.server.server_close()


class PackMetrics:
    """The packing daemon's counters: images packed, skipped by reason, shards, polls, last success."""

    def __init__(self, port: int | None):
        self.enabled = port is not None
        self.server = None
        self.port = None
        if not self.enabled:
            return
        self.registry = CollectorRegistry()
        Info("gand_build", "gand version", registry=self.registry).info({"version": __version__, "role": "packer"})
        self.packed = Counter("gand_pack_images_packed", "Images packed into shards", registry=self.registry)
        self.skipped = Counter("gand_pack_images_skipped", "Source files skipped, by reason", ["reason"],
                               registry=self.registry)  # fmt: skip
        self.shards = Counter("gand_pack_shards", "Parts published (one tar per resolution each)",
                              registry=self.registry)  # fmt: skip
        self.polls = Counter("gand_pack_polls", "Source polls finished", registry=self.registry)
        self.failures = Counter("gand_pack_poll_failures", "Source polls that failed", registry=self.registry)
        self.generation = Gauge("gand_pack_manifest_generation", "Newest published manifest generation",
                                registry=self.registry)  # fmt: skip
        self.dataset_images = Gauge("gand_pack_dataset_images", "Images in the newest generation",
                                    registry=self.registry)  # fmt: skip
        self.last_success = Gauge("gand_pack_last_success_timestamp_seconds", "Unix time of the last good poll",
                                  registry=self.registry)  # fmt: skip
        self.server = _serve(self.registry, port)
        self.port = self.server.server_port if self.server is not None else None

    def record_poll(self, report) -> None:
        if not self.enabled:
            return
        self.polls.inc()
        self.packed.inc(report.packed)
        for reason, count in report.skipped.items():
            self.skipped.labels(reason=reason).inc(count)
        self.shards.inc(report.parts)
        if report.manifest is not None:
            self.generation.set(report.manifest.generation)
            self.dataset_images.set(report.manifest.num_samples)
        self.last_success.set(time.time())

    def record_failure(self) -> None:
        if self.enabled:
            self.failures.inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

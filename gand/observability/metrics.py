"""The one place gand talks to prometheus_client: a /metrics endpoint with the run's progress and losses.

Gauges carry absolute values (images seen, step) so they stay right across restarts and resumes.
"""

from __future__ import annotations

import time

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, start_http_server

from gand import __version__
from gand.observability.report import NETWORK_TAGS, LoggedStep

log = structlog.get_logger("gand.metrics")


def _serve(registry: CollectorRegistry, port: int):
    """An HTTP /metrics server on `port` (0: any free port), or None when the port is taken."""
    try:
        server, _ = start_http_server(port, registry=registry)
    except OSError as err:  # a busy port must not stop training or packing
        log.warning(
            "metrics_port_unavailable",
            port=port,
            error=str(err),
            effect="running without /metrics",
            fix=f"choose a free port: metrics.port=<port> for gand train, --metrics-port <port> for gand "
            f"daemon (0 picks any free port; `ss -ltnp 'sport = :{port}'` shows what holds it)",
        )
        return None
    log.info("metrics_serving", port=server.server_port, path="/metrics")
    return server


class TrainingMetrics:
    """Training progress and GAN health for Prometheus, served by the main rank with values combined over ranks
    (the loop averages them across ranks before recording). With no port it records nothing and serves nothing.
    """

    def __init__(self, port: int | None, run_name: str):
        self.enabled = port is not None
        self.server = None
        if port is None:
            return
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_start_time_seconds, ...
        Info("gand_build", "gand version", registry=registry).info({"version": __version__, "run": run_name})

        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry)

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        # progress
        self.steps = gauge("gand_train_steps", "Optimisation steps done (survives resumes)")
        self.images_seen = gauge("gand_train_images_seen", "Real images consumed by all ranks (survives resumes)")
        self.epoch = gauge("gand_train_epoch", "Current data epoch")
        self.images_per_second = gauge("gand_train_images_per_second", "Training throughput, all ranks")
        self.last_step = gauge("gand_train_last_step_timestamp_seconds", "Unix time of the last logged step")
        self.resumes = counter("gand_train_resumes", "Runs of this process that resumed from a checkpoint")
        self.resumed_step = gauge("gand_train_resumed_from_step", "Step of the checkpoint this process resumed")
        self.steps_lost = gauge(
            "gand_train_steps_lost_at_resume",
            "Steps the previous process trained past the "
            "checkpoint this one resumed from (a lower bound; 0 when none or unknown)",
        )
        self.rollbacks = counter("gand_train_rollbacks", "Roll-backs to the last commit after NaN/Inf losses")
        self.collapse_rollbacks = counter(
            "gand_train_collapse_rollbacks",
            "Returns to the best checkpoint by the collapse guard (its score stayed worse than the best)",
        )
        self.notices = counter(
            "gand_preemption_notices",
            "Preemption notices from the cloud's metadata service (each commits a checkpoint at once)",
            ("provider",),
        )
        # losses and the game
        self.loss = gauge(
            "gand_train_loss",
            "Latest loss per network and term (total, adv, class, style, ambiguity, gp)",
            ("network", "term"),
        )
        self.d_output = gauge(
            "gand_discriminator_output", "Mean D probability of 'real', on real and on fake images", ("input",)
        )
        self.d_accuracy = gauge(
            "gand_discriminator_accuracy", "Share of real / fake images D classifies right", ("input",)
        )
        self.grad_norm = gauge("gand_grad_norm", "L2 norm of the gradient, per network", ("network",))
        self.vanishing = gauge(
            "gand_vanishing_gradient_ratio",
            "Share of gradient entries with |g| < 0.01 per layer group (the Duke report's signal)",
            ("network", "group"),
        )
        self.learning_rate = gauge("gand_learning_rate", "Current learning rate", ("network",))
        self.loss_scale = gauge("gand_fp16_loss_scale", "fp16 loss scale", ("network",))
        self.skipped_steps = gauge(
            "gand_fp16_skipped_steps", "fp16 steps skipped for inf/NaN gradients, whole run", ("network",)
        )
        # health
        self.diversity = gauge(
            "gand_health_sample_diversity",
            "Pairwise distance of fixed-noise samples over that "
            "of real images (about 1 healthy, towards 0 mode collapse)",
        )
        self.d_dominating = gauge(
            "gand_health_discriminator_dominating",
            "1 while D has been right on >= 95% of real and fake images for 20 log points in a row",
        )
        self.augment_p = gauge("gand_augment_probability", "Adaptive augmentation: probability p of each transform")
        self.augment_rt = gauge(
            "gand_augment_overfitting_signal",
            "Adaptive augmentation: r_t = E[sign D(real)] "
            "at the last adjustment (p rises while it is above augment.target)",
        )
        # evaluation (only after one ran: a labelled series, so nothing is exported before)
        self.eval_score = gauge(
            "gand_eval_score",
            "Latest evaluation of the sampling generator: fid, kid_mean, kid_std, is_mean, is_std",
            ("metric",),
        )
        # data and memory
        self.data_wait = counter("gand_data_wait_seconds", "Time the training loop waited for batches (mean rank)")
        self.batches = counter("gand_data_batches", "Batches drawn per rank")
        self.shards_opened = counter("gand_data_shards_opened", "Shards opened by the loader workers, all ranks")
        self.samples_skipped = counter(
            "gand_data_samples_skipped",
            "Samples the loader left out, all ranks, by reason: unknown_class, undecodable",
            ("reason",),
        )
        self.shards_damaged = gauge(
            "gand_data_shards_damaged",
            "Shards left out of training because their size or SHA-256 is not what the manifest says (main rank)",
        )
        self.gpu_memory = gauge("gand_gpu_memory_bytes", "GPU memory of the main rank", ("kind",))
        # checkpoints
        self.checkpoint_time = gauge("gand_checkpoint_last_commit_timestamp_seconds", "Unix time of the last commit")
        self.checkpoint_images = gauge("gand_checkpoint_last_commit_images", "images_seen of the last commit")
        self.checkpoint_bytes = gauge("gand_checkpoint_size_bytes", "Bytes of the last snapshot (main rank)")
        self.commits = counter("gand_checkpoint_commits", "Checkpoints committed")
        self.upload_failures = counter(
            "gand_checkpoint_upload_failures", "Failed storage requests while uploading checkpoints (each retry counts)"
        )
        self.uploads_failed = counter("gand_checkpoint_uploads_abandoned", "Checkpoint uploads given up after retries")
        self.uploads_pending = gauge("gand_checkpoint_uploads_pending", "Snapshots uploading or waiting to")
        self.lease_held = gauge(
            "gand_checkpoint_lease_held",
            "1 while this trainer holds the run's lease (one writer per checkpoint.url); 0 when it has none or lost it",
        )
        self.leases_lost = counter("gand_checkpoint_leases_lost", "Leases another trainer took over from this one")
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
        self.stall = Histogram(
            "gand_checkpoint_stall_seconds",
            "Training stall per save (the synchronous part)",
            registry=registry,
            buckets=buckets,
        )
        self.upload_seconds = Histogram(
            "gand_checkpoint_upload_seconds", "Duration of committed uploads", registry=registry, buckets=buckets
        )
        self._failed_attempts_seen = 0
        self.server = _serve(registry, port)
        self.enabled = self.server is not None
        self.port = self.server.server_port if self.server is not None else None

    def record_step(self, logged: LoggedStep) -> None:
        """One logging step, already combined across ranks (gand.observability.report)."""
        if not self.enabled:
            return
        self.steps.set(logged.step)
        self.images_seen.set(logged.images_seen)
        self.epoch.set(logged.epoch)
        self.images_per_second.set(logged.images_per_second)
        self.last_step.set(time.time())
        for network, numbers in logged.networks().items():
            self.loss.labels(network=NETWORK_TAGS[network], term="total").set(numbers.loss)
            for term, value in numbers.terms.items():
                self.loss.labels(network=NETWORK_TAGS[network], term=term).set(value)
            if numbers.grad_norm is not None:
                self.grad_norm.labels(network=network).set(numbers.grad_norm)
            for group, share in numbers.vanishing.items():
                self.vanishing.labels(network=network, group=group).set(share)
            self.learning_rate.labels(network=network).set(numbers.learning_rate)
            if numbers.loss_scale is not None:
                self.loss_scale.labels(network=network).set(numbers.loss_scale)
                self.skipped_steps.labels(network=network).set(numbers.skipped_steps or 0)
        if logged.d_outputs is not None:
            out = logged.d_outputs
            self.d_output.labels(input="real").set(out.real)
            self.d_output.labels(input="fake").set(out.fake)
            self.d_accuracy.labels(input="real").set(out.accuracy_real)
            self.d_accuracy.labels(input="fake").set(out.accuracy_fake)
        if logged.d_dominating is not None:
            self.d_dominating.set(float(logged.d_dominating))
        data = logged.data
        self.data_wait.inc(data.wait_seconds)
        self.batches.inc(data.batches)
        self.shards_opened.inc(data.shards_opened)
        for reason, count in data.skipped.items():
            self.samples_skipped.labels(reason=reason).inc(count)

    def record_collapse_rollback(self) -> None:
        if self.enabled:
            self.collapse_rollbacks.inc()

    def record_augment(self, probability: float, overfitting_signal: float) -> None:
        if self.enabled:
            self.augment_p.set(probability)
            self.augment_rt.set(overfitting_signal)

    def record_resume(self, step: int, steps_lost: int | None = None) -> None:
        if self.enabled:
            self.resumes.inc()
            self.resumed_step.set(step)
            if steps_lost is not None:
                self.steps_lost.set(steps_lost)

    def record_eval(self, scores: dict[str, float]) -> None:
        if self.enabled:
            for name, value in scores.items():
                self.eval_score.labels(metric=name).set(value)

    def record_diversity(self, value: float) -> None:
        if self.enabled:
            self.diversity.set(value)

    def record_gpu_memory(self, allocated: int, reserved: int, peak: int) -> None:
        if self.enabled:
            for kind, value in (("allocated", allocated), ("reserved", reserved), ("peak", peak)):
                self.gpu_memory.labels(kind=kind).set(value)

    def record_snapshot(self, stall_seconds: float, size_bytes: int) -> None:
        if self.enabled:
            self.stall.observe(stall_seconds)
            self.checkpoint_bytes.set(size_bytes)

    def record_commit(self, result) -> None:
        """A finished upload that committed (an UploadResult)."""
        if not self.enabled:
            return
        self.commits.inc()
        self.checkpoint_time.set(time.time())
        if result.images_seen is not None:
            self.checkpoint_images.set(result.images_seen)
        self.upload_seconds.observe(result.seconds)

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

    def record_damaged_shards(self, count: int) -> None:
        if self.enabled:
            self.shards_damaged.set(count)

    def record_lease(self, held: bool, lost: bool = False) -> None:
        if not self.enabled:
            return
        self.lease_held.set(int(held))
        if lost:
            self.leases_lost.inc()

    def watch_notices(self, provider: str) -> None:
        """The provider's notice counter exists (at 0) from the start, so dashboards show "none yet"."""
        if self.enabled:
            self.notices.labels(provider=provider)

    def record_preemption_notice(self, provider: str) -> None:
        if self.enabled:
            self.notices.labels(provider=provider).inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class PackMetrics:
    """The packing daemon's counters: images packed, skipped by reason, shards, polls, last success."""

    def __init__(self, port: int | None):
        self.enabled = port is not None
        self.server = None
        self.port = None
        if port is None:
            return
        self.registry = CollectorRegistry()
        Info("gand_build", "gand version", registry=self.registry).info({"version": __version__, "role": "packer"})
        self.packed = Counter("gand_pack_images_packed", "Images packed into shards", registry=self.registry)
        self.skipped = Counter(
            "gand_pack_images_skipped", "Source files skipped, by reason", ["reason"], registry=self.registry
        )
        self.shards = Counter(
            "gand_pack_shards", "Parts published (one tar per resolution each)", registry=self.registry
        )
        self.polls = Counter("gand_pack_polls", "Source polls finished", registry=self.registry)
        self.failures = Counter("gand_pack_poll_failures", "Source polls that failed", registry=self.registry)
        self.generation = Gauge(
            "gand_pack_manifest_generation", "Newest published manifest generation", registry=self.registry
        )
        self.dataset_images = Gauge(
            "gand_pack_dataset_images", "Images in the newest generation", registry=self.registry
        )
        self.last_success = Gauge(
            "gand_pack_last_success_timestamp_seconds", "Unix time of the last good poll", registry=self.registry
        )
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

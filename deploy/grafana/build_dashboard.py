"""Writes deploy/grafana/gand.json, the Grafana dashboard, from the panel list below (the JSON is generated:
edit this file, then run `python deploy/grafana/build_dashboard.py`; a test checks the two agree).

Every panel's queries are run against a real Prometheus scraping a real run in
tests/integration/test_prometheus_dashboard.py.
"""

from __future__ import annotations

import json
from pathlib import Path

RUN = '{job=~"$job", instance=~"$instance"}'


def with_labels(matcher: str) -> str:
    """RUN's selector plus one more label matcher."""
    return RUN[:-1] + ", " + matcher + "}"


# (row, [(title, unit, [(query, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Progress", [
        ("Images seen", "short", [(f"gand_train_images_seen{RUN}", "{{instance}}")]),
        ("Throughput", "short", [(f"gand_train_images_per_second{RUN}", "images/s")]),
        ("Steps and epoch", "short", [(f"gand_train_steps{RUN}", "step"), (f"gand_train_epoch{RUN}", "epoch")]),
        ("Since the last step", "s", [(f"time() - gand_train_last_step_timestamp_seconds{RUN}", "seconds")]),
        ("Resumes and roll-backs", "short", [(f"gand_train_resumed_from_step{RUN}", "resumed from step"),
                                            (f"gand_train_steps_lost_at_resume{RUN}", "steps lost at that resume"),
                                            (f"gand_train_rollbacks_total{RUN}", "NaN roll-backs"),
                                            (f"gand_train_collapse_rollbacks_total{RUN}", "guard roll-backs")]),
    ]),
    ("Losses and the game", [
        ("Losses", "short", [(f"gand_train_loss{RUN}", "{{network}} {{term}}")]),
        ("D(x) and D(G(z))", "percentunit", [(f"gand_discriminator_output{RUN}", "D on {{input}}")]),
        ("D accuracy", "percentunit", [(f"gand_discriminator_accuracy{RUN}", "on {{input}}")]),
    ]),
    ("Gradients and optimisers", [
        ("Gradient norm", "short", [(f"gand_grad_norm{RUN}", "{{network}}")]),
        ("Vanishing gradients (|g| < 0.01)", "percentunit",
         [(f"gand_vanishing_gradient_ratio{RUN}", "{{network}} {{group}}")]),
        ("Learning rate", "short", [(f"gand_learning_rate{RUN}", "{{network}}")]),
        ("fp16 loss scale and skipped steps", "short", [(f"gand_fp16_loss_scale{RUN}", "scale {{network}}"),
                                                        (f"gand_fp16_skipped_steps{RUN}", "skipped {{network}}")]),
    ]),
    ("Health", [
        ("Sample diversity (1: as varied as data)", "short", [(f"gand_health_sample_diversity{RUN}", "diversity")]),
        ("D dominating", "short", [(f"gand_health_discriminator_dominating{RUN}", "dominating")]),
        ("Adaptive augmentation", "short", [(f"gand_augment_probability{RUN}", "p"),
                                             (f"gand_augment_overfitting_signal{RUN}", "r_t")]),
    ]),
    ("Evaluation", [
        ("FID (lower is better)", "short", [("gand_eval_score" + with_labels('metric="fid"'), "FID")]),
        ("KID and Inception Score", "short",
         [("gand_eval_score" + with_labels('metric=~"kid_mean|is_mean"'), "{{metric}}")]),
    ]),
    ("Data and memory", [
        ("Waiting for data", "percentunit", [(f"rate(gand_data_wait_seconds_total{RUN}[5m])", "share of time")]),
        ("Batches per second", "short", [(f"rate(gand_data_batches_total{RUN}[5m])", "per rank")]),
        ("Shards opened and samples skipped", "short",
         [(f"increase(gand_data_shards_opened_total{RUN}[15m])", "shards opened / 15m"),
          (f"increase(gand_data_samples_skipped_total{RUN}[15m])", "skipped {{reason}} / 15m"),
          (f"gand_data_shards_damaged{RUN}", "damaged shards left out")]),
        ("GPU memory", "bytes", [(f"gand_gpu_memory_bytes{RUN}", "{{kind}}")]),
        ("Process memory", "bytes", [(f"process_resident_memory_bytes{RUN}", "RSS {{instance}}")]),
    ]),
    ("Checkpoints", [
        ("Since the last commit", "s", [(f"time() - gand_checkpoint_last_commit_timestamp_seconds{RUN}", "seconds")]),
        ("Training stall per save (p90)", "s",
         [(f"histogram_quantile(0.9, sum by (le) (rate(gand_checkpoint_stall_seconds_bucket{RUN}[30m])))", "p90")]),
        ("Upload time (p90)", "s",
         [(f"histogram_quantile(0.9, sum by (le) (rate(gand_checkpoint_upload_seconds_bucket{RUN}[30m])))", "p90")]),
        ("Upload failures and pending", "short", [(f"increase(gand_checkpoint_upload_failures_total{RUN}[15m])",
                                                  "failed requests / 15m"),
                                                 (f"gand_checkpoint_uploads_pending{RUN}", "pending")]),
        ("Checkpoint size", "bytes", [(f"gand_checkpoint_size_bytes{RUN}", "bytes")]),
        ("Spot notices and the run's lease", "short",
         [(f"increase(gand_preemption_notices_total{RUN}[1h])", "{{provider}} notices / 1h"),
          (f"gand_checkpoint_lease_held{RUN}", "lease held"),
          (f"gand_checkpoint_leases_lost_total{RUN}", "leases lost")]),
    ]),
    ("Packing daemon", [
        ("Images packed", "short", [(f"gand_pack_images_packed_total{RUN}", "packed")]),
        ("Images skipped by reason", "short", [(f"gand_pack_images_skipped_total{RUN}", "{{reason}}")]),
        ("Dataset generation and size", "short", [(f"gand_pack_manifest_generation{RUN}", "generation"),
                                                  (f"gand_pack_dataset_images{RUN}", "images")]),
    ]),
]  # fmt: skip


def dashboard() -> dict:
    panels, y, panel_id = [], 0, 1
    for row_title, row_panels in ROWS:
        panels.append({"type": "row", "title": row_title, "id": panel_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})  # fmt: skip
        panel_id, y = panel_id + 1, y + 1
        width = 24 // len(row_panels)
        for index, (title, unit, queries) in enumerate(row_panels):
            panels.append({
                "type": "timeseries", "title": title, "id": panel_id,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": width, "x": index * width, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for n, (expr, legend) in enumerate(queries)],
            })  # fmt: skip
            panel_id += 1
        y += 8
    variables = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "job", "type": "query", "label": "job", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": "label_values(gand_build_info, job)",
         "refresh": 2, "current": {"text": "All", "value": "$__all"}},
        {"name": "instance", "type": "query", "label": "instance", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": 'label_values(gand_build_info{job=~"$job"}, instance)', "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
    ]  # fmt: skip
    return {
        "uid": "gand-training",
        "title": "gand: GAN training",
        "description": "Progress, losses, GAN health, data, memory and checkpoints of gand runs (generated by "
        "deploy/grafana/build_dashboard.py).",
        "tags": ["gand", "gan", "training"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def queries(board: dict) -> list[str]:
    """Every Prometheus expression in the dashboard, with the variables set to match everything."""
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append(target["expr"].replace("$job", ".*").replace("$instance", ".*"))
    return found


if __name__ == "__main__":
    out = Path(__file__).with_name("gand.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")

"""Kubernetes objects for a gand run, as plain dicts: the training Job (one pod, or an Indexed Job across nodes),
its ConfigMap and headless Service, the packing daemon, and the monitoring objects.

Pure functions of the config and the options: `gand submit` sends what these return, `gand submit --dry-run`
prints it, and `deploy/k8s/build.py` writes the same objects as the kustomize base, so there is one source.

The preemption contract (README, "Exit codes"): 75 = checkpointed, retry me; 2 = bad config and 3 = diverged,
retrying cannot help; anything else is a failure that counts against `backoffLimit`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from gand.config import GandConfig
from gand.errors import ConfigError, Diverged, Preempted

CONFIG_DIR = "/etc/gand"
CONFIG_FILE = "config.yaml"
HOME = "/home/gand"
METRICS_PORT = 9464
DAEMON_METRICS_PORT = 9465
RENDEZVOUS_PORT = 29500
USER_ID = 1000
APP = "gand"
RUN_LABEL = "gand.dev/run"
# A spot VM's notice: GCP gives 30 s, Azure 30 s, AWS 2 min. The pod gets the checkpoint grace plus this margin
# for the process to exit after its final upload.
GRACE_MARGIN_SECONDS = 5

# Where spot capacity lives on each managed Kubernetes, and the taint it carries (if any).
SPOT: dict[str, dict[str, Any]] = {
    "gke": {
        "nodeSelector": {"cloud.google.com/gke-spot": "true"},
        "tolerations": [
            {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ],
    },
    "eks": {  # managed node groups; Karpenter uses karpenter.sh/capacity-type: spot
        "nodeSelector": {"eks.amazonaws.com/capacityType": "SPOT"},
        "tolerations": [],
    },
    "aks": {
        "nodeSelector": {"kubernetes.azure.com/scalesetpriority": "spot"},
        "tolerations": [
            {
                "key": "kubernetes.azure.com/scalesetpriority",
                "operator": "Equal",
                "value": "spot",
                "effect": "NoSchedule",
            }
        ],
    },
}
# GPU nodes are usually tainted so that only GPU work lands there.
# The cloud whose metadata service announces a spot VM's preemption, per managed Kubernetes (`--spot`).
SPOT_NOTICE = {"gke": "gcp", "eks": "aws", "aks": "azure"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class SubmitOptions:
    image: str
    gpus: int = 1  # per pod
    nodes: int = 1
    spot: str | None = None  # a key of SPOT
    namespace: str = "default"
    storage_secret: str = "gand-storage"  # optional Secret whose keys become env vars (AWS_ACCESS_KEY_ID, ...)
    service_account: str = "gand"  # annotate it for IRSA / GKE Workload Identity instead of a Secret
    cpu_per_gpu: int = 4
    memory_gib_per_gpu: int = 24
    backoff_limit: int = 3  # real failures only: preemptions and exit 75 do not count
    ttl_seconds: int = 7 * 24 * 3600
    queue: str | None = None  # a Kueue LocalQueue in the namespace: the Job is created suspended, Kueue admits it
    priority_class: str | None = None  # the pods' PriorityClass (Kueue orders its queues by it too)


def pod_security() -> dict[str, Any]:
    """Every gand pod: the image's non-root user, the runtime's default seccomp profile (a fresh dict per use)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "fsGroup": USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def check_options(options: SubmitOptions) -> None:
    if options.gpus < 0 or options.nodes < 1:
        raise ConfigError(f"--gpus must be >= 0 and --nodes >= 1 (got {options.gpus}, {options.nodes})")
    if options.spot is not None and options.spot not in SPOT:
        raise ConfigError(f"--spot: {options.spot!r} is not allowed; use one of {', '.join(SPOT)}")
    if not re.fullmatch(DNS_LABEL, options.namespace):
        raise ConfigError(f"--namespace: {options.namespace!r} is not a Kubernetes namespace name")
    # The queue name is also a label value (at most 63 characters); a PriorityClass name may have 253.
    for flag, value, limit in (("--queue", options.queue, 63), ("--priority-class", options.priority_class, 253)):
        if value is not None and not (len(value) <= limit and re.fullmatch(DNS_SUBDOMAIN, value)):
            raise ConfigError(
                f"{flag}: {value!r} is not a Kubernetes object name (at most {limit} lower-case "
                "letters, digits, '-' and '.', starting and ending with a letter or digit)"
            )


def check_config_for_cluster(cfg: GandConfig) -> None:
    """A pod's disk is gone after a preemption: data and checkpoints must live in object storage."""
    problems = []
    if "://" not in cfg.data.path or cfg.data.path.startswith("file://"):
        problems.append(f"data.path: {cfg.data.path!r} is local; a pod needs a URL (s3://, gs://, https://)")
    url = cfg.checkpoint.url or ""
    if "://" not in url or url.startswith("file://"):
        problems.append(
            f"checkpoint.url: {url or 'unset'!r} is local; a preempted pod would lose its checkpoints"
            " (use s3:// or gs://)"
        )
    for key, value in (("data.path", cfg.data.path), ("checkpoint.url", url)):
        if re.match(r"^[a-z0-9+.-]+://[^/@]+@", value):
            problems.append(f"{key}: has credentials in it; put them in the Secret or the service account")
    if problems:
        raise ConfigError("this config cannot run on Kubernetes:\n" + "\n".join(f"  {p}" for p in problems))


def job_name(cfg: GandConfig) -> str:
    """`gand-<run.name>` as a DNS label (pods append -<index>-<random>, so keep room)."""
    name = re.sub(r"[^a-z0-9-]+", "-", cfg.run.name.lower()).strip("-")
    return f"gand-{name}"[:50].rstrip("-")


def labels(cfg: GandConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component, RUN_LABEL: job_name(cfg)}


def run_config(cfg: GandConfig, options: SubmitOptions | None = None) -> dict[str, Any]:
    """The config the pod runs: credential-free, run.dir in the pod's home, metrics on the scraped port, and on
    spot nodes the provider's preemption notices watched (unless the config chose otherwise)."""
    data = cfg.snapshot()
    data["run"]["dir"] = f"{HOME}/runs/{cfg.run.name}"
    data["metrics"]["port"] = METRICS_PORT
    if options is not None and options.spot and "preemption_notice" not in cfg.checkpoint.model_fields_set:
        data["checkpoint"]["preemption_notice"] = SPOT_NOTICE[options.spot]
    return data


def render_run(cfg: GandConfig, options: SubmitOptions) -> list[dict[str, Any]]:
    """ConfigMap + Job (+ headless Service across nodes): what `gand submit` creates for one run."""
    check_options(options)
    check_config_for_cluster(cfg)
    objects = [config_map(cfg, options), training_job(cfg, options)]
    if options.nodes > 1:
        objects.append(headless_service(cfg, options))
    return objects


def config_map(cfg: GandConfig, options: SubmitOptions) -> dict[str, Any]:
    text = yaml.safe_dump(run_config(cfg, options), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{job_name(cfg)}-config", "namespace": options.namespace, "labels": labels(cfg, "train")},
        "data": {CONFIG_FILE: text},
    }


def training_job(cfg: GandConfig, options: SubmitOptions) -> dict[str, Any]:
    name = job_name(cfg)
    grace_seconds = int(cfg.checkpoint.grace_seconds) + GRACE_MARGIN_SECONDS
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job makes a new pod instead
        "terminationGracePeriodSeconds": grace_seconds,
        "serviceAccountName": options.service_account,
        "securityContext": pod_security(),
        "containers": [training_container(cfg, options)],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{name}-config"}},
            # DataLoader workers pass batches through shared memory; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(1, options.gpus) * 8}Gi"}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "tolerations": [GPU_TOLERATION] if options.gpus else [],
    }
    if options.spot:
        spot = SPOT[options.spot]
        pod_spec["nodeSelector"] = dict(spot["nodeSelector"])
        pod_spec["tolerations"] = pod_spec["tolerations"] + [dict(t) for t in spot["tolerations"]]
    if options.nodes > 1:
        pod_spec["subdomain"] = name  # pods resolve as <job>-<index>.<service>
    if options.priority_class:
        pod_spec["priorityClassName"] = options.priority_class
    spec: dict[str, Any] = {
        "backoffLimit": options.backoff_limit,
        "ttlSecondsAfterFinished": options.ttl_seconds,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": {"labels": labels(cfg, "train")}, "spec": pod_spec},
    }
    if options.nodes > 1:
        spec.update({"completionMode": "Indexed", "completions": options.nodes, "parallelism": options.nodes})
    job_labels = labels(cfg, "train")
    if options.queue:
        # Kueue's contract for batch/v1 Jobs: the queue label, and created suspended; Kueue unsuspends the Job when
        # the ClusterQueue behind the LocalQueue has quota for all its pods at once.
        job_labels[KUEUE_QUEUE_LABEL] = options.queue
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": options.namespace, "labels": job_labels},
        "spec": spec,
    }


def pod_failure_policy() -> dict[str, Any]:
    """The exit-code contract, for the container named `train`: first matching rule wins."""
    return {
        "rules": [
            # Bad config (2) and divergence after every roll-back (3): a retry would fail the same way.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": "train",
                    "operator": "In",
                    "values": [ConfigError.exit_code, Diverged.exit_code],
                },
            },
            # Checkpointed and stopped (SIGTERM from a drain or a spot notice): a new pod resumes; not a failure.
            {
                "action": "Ignore",
                "onExitCodes": {"containerName": "train", "operator": "In", "values": [Preempted.exit_code]},
            },
            # Evicted, preempted or the node went away: whatever the exit code, not the run's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def training_container(cfg: GandConfig, options: SubmitOptions) -> dict[str, Any]:
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}"
    if options.gpus <= 1 and options.nodes == 1:
        args = ["train", config_path]
    else:
        # One process per GPU on every node; gand's launcher keeps the ranks' exit codes (75, 2, 3), which
        # `accelerate launch` would all report as 1. Across nodes, everyone meets at pod 0 of the Indexed Job.
        args = ["launch", "--nproc-per-node", str(max(1, options.gpus))]
        if options.nodes > 1:
            args += [
                "--nnodes",
                str(options.nodes),
                "--main-address",
                f"{job_name(cfg)}-0.{job_name(cfg)}",
                "--main-port",
                str(RENDEZVOUS_PORT),
            ]
        args.append(config_path)
    gpus = max(1, options.gpus)
    resources: dict[str, Any] = {
        "requests": {"cpu": str(options.cpu_per_gpu * gpus), "memory": f"{options.memory_gib_per_gpu * gpus}Gi"},
        "limits": {"memory": f"{options.memory_gib_per_gpu * gpus}Gi"},
    }
    if options.gpus:
        resources["limits"]["nvidia.com/gpu"] = options.gpus
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if options.nodes > 1:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT})
    return {
        "name": "train",
        "image": options.image,
        "args": args,
        "env": [{"name": "GAND_LOG_FORMAT", "value": "json"}],
        "envFrom": [{"secretRef": {"name": options.storage_secret, "optional": True}}],
        "ports": ports,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": f"{HOME}/runs"},
        ],
    }


def headless_service(cfg: GandConfig, options: SubmitOptions) -> dict[str, Any]:
    """DNS names for the Indexed Job's pods, so every node finds rank 0 at <job>-0.<job>."""
    name = job_name(cfg)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels(cfg, "train")},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # the rendezvous happens before any readiness
            "selector": {RUN_LABEL: name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


# -- cluster-wide objects: deployed once from deploy/k8s (kustomize), not per run ----------------------------------
def local_queue(name: str, cluster_queue: str, namespace: str = "default") -> dict[str, Any]:
    """A Kueue LocalQueue (kueue.x-k8s.io/v1beta1): the namespace's door to a ClusterQueue's quota."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": APP}},
        "spec": {"clusterQueue": cluster_queue},
    }


def service_account(namespace: str = "default", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The pods' identity. Annotate it for IRSA (eks.amazonaws.com/role-arn) or GKE Workload Identity
    (iam.gke.io/gcp-service-account) to reach the bucket without a key Secret."""
    metadata: dict[str, Any] = {"name": "gand", "namespace": namespace, "labels": {"app.kubernetes.io/name": APP}}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}


def daemon_deployment(
    image: str,
    source: str,
    dest: str,
    resolutions: str = "32,64,128,256",
    interval_seconds: int = 60,
    namespace: str = "default",
) -> dict[str, Any]:
    """`gand daemon` keeps packing new images from `source` into `dest`; one replica (it is the only writer)."""
    pod_labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "daemon"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gand-daemon", "namespace": namespace, "labels": pod_labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two writers of one dataset at once
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": "gand",
                    "terminationGracePeriodSeconds": 60,  # a shard in flight is finished and published
                    "securityContext": pod_security(),
                    "containers": [
                        {
                            "name": "daemon",
                            "image": image,
                            "args": [
                                "daemon",
                                source,
                                dest,
                                "--resolutions",
                                resolutions,
                                "--interval",
                                str(interval_seconds),
                                "--metrics-port",
                                str(DAEMON_METRICS_PORT),
                            ],
                            "env": [{"name": "GAND_LOG_FORMAT", "value": "json"}],
                            "envFrom": [{"secretRef": {"name": "gand-storage", "optional": True}}],
                            "ports": [{"name": "metrics", "containerPort": DAEMON_METRICS_PORT}],
                            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }


def pod_monitor(namespace: str = "default") -> dict[str, Any]:
    """prometheus-operator: scrape every gand pod (trainers and the daemon) on its `metrics` port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "gand", "namespace": namespace, "labels": {"app.kubernetes.io/name": APP}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "podMetricsEndpoints": [{"port": "metrics", "interval": "15s", "path": "/metrics"}],
        },
    }


def prometheus_rule(rule_groups: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """deploy/prometheus/rules.yaml as a prometheus-operator PrometheusRule (the same groups)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "gand", "namespace": namespace, "labels": {"app.kubernetes.io/name": APP}},
        "spec": {"groups": rule_groups["groups"]},
    }


def dashboard_config_map(dashboard_json: str, namespace: str = "default") -> dict[str, Any]:
    """The Grafana dashboard for the Grafana sidecar, which loads ConfigMaps labelled grafana_dashboard=1."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "gand-dashboard",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": APP, "grafana_dashboard": "1"},
        },
        "data": {"gand.json": dashboard_json},
    }


class _BlockDumper(yaml.SafeDumper):
    """YAML with multi-line strings (the run config, the dashboard) as readable literal blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream, keys in the order they were built."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, width=120)

"""The only module that talks to a Kubernetes API server (through the official `kubernetes` client): create a
run's objects, and report on a run. Rendering the objects is gand.k8s.render's job."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from gand.errors import ConfigError, GandError
from gand.k8s.render import CONFIG_FILE, RUN_LABEL


class ClusterError(GandError):
    exit_code = 1


def _client():
    try:
        import kubernetes
    except ImportError:
        raise ConfigError("talking to a cluster needs the kubernetes client: pip install 'gand[k8s]'") from None
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as err:
            raise ClusterError(f"no cluster: no in-cluster service account and no usable kubeconfig ({err})") from None
    return kubernetes


@contextlib.contextmanager
def _reachable(kubernetes: Any) -> Iterator[None]:
    """A server that cannot be reached (refused, DNS, TLS, timeouts: urllib3's errors) is one message."""
    import urllib3

    try:
        yield
    except urllib3.exceptions.HTTPError as err:
        host = kubernetes.client.Configuration.get_default_copy().host
        reason = getattr(err, "reason", None) or err
        raise ClusterError(
            f"cannot reach the Kubernetes API server at {host}: {type(reason).__name__}: "
            f"{str(reason).split(': ', 1)[-1][:200]}; check `kubectl cluster-info`, KUBECONFIG and "
            "the current context, or use --dry-run to print the objects"
        ) from None


def create_objects(objects: list[dict[str, Any]], namespace: str, server_dry_run: bool = False) -> list[str]:
    """Create each object; with server_dry_run the API server validates and admits them but stores nothing.
    Returns one line per object."""
    kubernetes = _client()
    api = kubernetes.client.ApiClient()
    created = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            with _reachable(kubernetes):
                kubernetes.utils.create_from_dict(
                    api, obj, namespace=namespace, **({"dry_run": "All"} if server_dry_run else {})
                )
        except kubernetes.utils.FailToCreateError as failed:
            reasons = "; ".join(_api_message(err) for err in failed.api_exceptions)
            raise ClusterError(f"could not create {kind} {namespace}/{name}: {reasons}") from None
        created.append(f"{kind.lower()}/{name} {'validated (server dry run)' if server_dry_run else 'created'}")
    return created


def _api_message(err: Any) -> str:
    try:
        return json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{getattr(err, 'status', '')} {getattr(err, 'reason', err)}".strip()


def run_status(run: str, namespace: str) -> str:
    """The Job, its pods (phase, exit codes, why they ended) and the newest committed checkpoint."""
    kubernetes = _client()
    job_name = run if run.startswith("gand-") else f"gand-{run}"
    batch, core = kubernetes.client.BatchV1Api(), kubernetes.client.CoreV1Api()
    try:
        with _reachable(kubernetes):
            job = batch.read_namespaced_job(job_name, namespace)
    except kubernetes.client.ApiException as err:
        if err.status == 404:
            raise ClusterError(f"no Job {namespace}/{job_name}; `kubectl get jobs -n {namespace}` lists them") from None
        raise ClusterError(f"cannot read Job {namespace}/{job_name}: {_api_message(err)}") from None
    pods = core.list_namespaced_pod(namespace, label_selector=f"{RUN_LABEL}={job_name}").items
    checkpoint = _newest_checkpoint(core, job_name, namespace)
    return format_status(job, pods, checkpoint)


def _newest_checkpoint(core: Any, job_name: str, namespace: str) -> str:
    """Read the run's checkpoint URL from its ConfigMap, then the newest commit there."""
    import yaml

    from gand.checkpoint.manager import MANIFEST, CheckpointManager, SingleProcess

    try:
        config_map = core.read_namespaced_config_map(f"{job_name}-config", namespace)
        url = yaml.safe_load(config_map.data[CONFIG_FILE])["checkpoint"]["url"]
        manager = CheckpointManager(url, SingleProcess())
        committed = manager.committed()
        if not committed:
            return f"none yet under {url}"
        manifest = json.loads(manager.store.read_bytes(f"{committed[-1]}/{MANIFEST}"))
        return f"{committed[-1]} (step {manifest.get('step')}) under {url}"
    except Exception as err:  # status is a report: a missing piece is shown, not fatal
        return f"unknown ({type(err).__name__}: {err})"


def format_status(job: Any, pods: list[Any], checkpoint: str) -> str:
    """Plain text from the client's V1Job / V1Pod objects."""
    status = job.status
    conditions = [f"{c.type}={c.status}" + (f" ({c.reason})" if c.reason else "") for c in status.conditions or []]
    lines = [
        f"job {job.metadata.namespace}/{job.metadata.name}: active {status.active or 0}, "
        f"succeeded {status.succeeded or 0}, failed {status.failed or 0}"
        + (f"; {', '.join(conditions)}" if conditions else ""),
        f"pods created: {len(pods)} (each restart after a preemption or failure is a new pod)",
    ]
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0):
        lines.append(f"  {pod.metadata.name}: {pod.status.phase}{_pod_detail(pod)}")
    lines.append(f"newest checkpoint: {checkpoint}")
    return "\n".join(lines)


def _pod_detail(pod: Any) -> str:
    details = []
    disrupted = [c for c in pod.status.conditions or [] if c.type == "DisruptionTarget" and c.status == "True"]
    if disrupted:
        details.append(f"disrupted ({disrupted[0].reason})")
    for container in pod.status.container_statuses or []:
        terminated = container.state.terminated if container.state else None
        if terminated is not None:
            meaning = {0: "done", 2: "bad config", 3: "diverged", 75: "preempted, checkpointed"}.get(
                terminated.exit_code, terminated.reason or "failed"
            )
            details.append(f"exit {terminated.exit_code} ({meaning})")
        if container.restart_count:
            details.append(f"{container.restart_count} container restarts")
    return f", {', '.join(details)}" if details else ""

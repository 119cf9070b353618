"""Everything under deploy/k8s and every `gand submit --dry-run` rendering, validated offline: the built-in kinds
with kubernetes-validate --strict for a pinned Kubernetes version, PodMonitor and PrometheusRule against
prometheus-operator's CRD schemas (as packaged by kubernetes-models, run with node); the overlays built by
`kubectl kustomize` where kubectl is installed; a server-side dry run where a cluster is reachable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gand.k8s.render import SPOT, SPOT_NOTICE, SubmitOptions, render_run
from tests.conftest import REPO, gand

pytestmark = pytest.mark.integration  # external tools: kubernetes-validate, node, kubectl, promtool

KUBERNETES_VERSION = "1.32.0"  # podFailurePolicy is GA from 1.31
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
KUEUE_SCHEMAS = {"LocalQueue": REPO / "tests" / "k8s" / "kueue-localqueue-v1beta1.schema.json"}
K8S = REPO / "deploy" / "k8s"
CRD_VALIDATOR = REPO / "tests" / "k8s" / "validate_crds.mjs"
EXAMPLE = ("data.path=s3://bucket/packed", "checkpoint.url=s3://bucket/runs/can256")


def load_build():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_k8s", K8S / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate(objects: list[dict[str, Any]]) -> None:
    """Raise with every problem: built-in kinds strictly against the pinned schema, CRD kinds against theirs."""
    problems = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        if obj["kind"] in KUEUE_SCHEMAS:
            import jsonschema

            schema = json.loads(KUEUE_SCHEMAS[obj["kind"]].read_text())
            problems += [f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}"
                         for error in jsonschema.Draft202012Validator(schema).iter_errors(obj)]  # fmt: skip
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}")
    custom = [obj for obj in objects if obj["kind"] in CRD_KINDS]
    if custom:
        result = validate_crds(custom)
        if result.returncode != 0:
            problems.append(result.stdout + result.stderr)
    assert not problems, "\n".join(problems)


def validate_crds(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    modules = REPO / "tests" / "k8s" / "node_modules" / "@kubernetes-models" / "prometheus-operator"
    assert node and modules.exists(), "the CRD schemas are installed by `make test` (npm ci --prefix tests/k8s)"
    return subprocess.run([node, str(CRD_VALIDATOR)], input=json.dumps(objects), capture_output=True, text=True,
                          timeout=60, cwd=CRD_VALIDATOR.parent)  # fmt: skip


def submit_dry_run(*args: str) -> list[dict[str, Any]]:
    """`gand submit ... --dry-run`, through the command-line entry point, in this process (fast)."""
    import contextlib
    import io

    from gand.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["submit", str(REPO / "configs" / "can256.yaml"), "--image", "registry.example/gand:1",
                     "--dry-run", *EXAMPLE, *args])  # fmt: skip
    assert code == 0
    return documents(printed.getvalue())


SUBMISSIONS = {
    "single-gpu": (),
    "multi-node": ("--nodes", "3", "--gpus", "4"),
    **{f"{provider}-spot": ("--spot", provider) for provider in SPOT},
    "cpu-only": ("--gpus", "0", "--namespace", "gan-runs"),
    "kueue": ("--queue", "team-a", "--priority-class", "low.priority", "--nodes", "2"),
}


def test_the_kustomize_tree_is_what_build_py_writes():
    expected = load_build().render_tree()
    on_disk = {str(p.relative_to(K8S)): p.read_text() for p in K8S.rglob("*.yaml")}
    assert on_disk == expected, "run `.venv/bin/python deploy/k8s/build.py` and commit the result"


def test_every_manifest_under_deploy_validates():
    objects = [doc for path in sorted(K8S.rglob("*.yaml")) if path.name != "kustomization.yaml"
               for doc in documents(path.read_text())]  # fmt: skip
    kinds = {obj["kind"] for obj in objects}
    assert {"Job", "ConfigMap", "ServiceAccount", "Service", "Deployment", "PodMonitor", "PrometheusRule",
            "LocalQueue"} <= kinds  # fmt: skip
    validate(objects)


@pytest.mark.parametrize("name", list(SUBMISSIONS))
def test_every_submit_rendering_validates(name):
    validate(submit_dry_run(*SUBMISSIONS[name]))


def test_the_validators_are_not_vacuous():
    job = submit_dry_run()[1]
    job["spec"]["template"]["spec"]["restartPolicy "] = "Never"  # a misspelt field
    with pytest.raises(AssertionError, match="restartPolicy "):
        validate([job])
    queue = documents((K8S / "overlays" / "kueue" / "local-queue.yaml").read_text())[0]
    queue["spec"]["clusterQueu"] = "cluster-queue"
    with pytest.raises(AssertionError, match="clusterQueu"):
        validate([queue])
    monitor = documents((K8S / "monitoring" / "podmonitor.yaml").read_text())[0]
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "fifteen seconds"
    assert validate_crds([monitor]).returncode == 1


def test_a_queued_submission_is_a_suspended_job_with_kueues_label_and_the_priority_class():
    _, job = submit_dry_run("--queue", "team-a", "--priority-class", "gand-low")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue unsuspends it once the ClusterQueue admits it
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "gand-low"
    plain = submit_dry_run()[1]
    assert "suspend" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert "priorityClassName" not in plain["spec"]["template"]["spec"]
    bad = gand("submit", str(REPO / "configs" / "can256.yaml"), "--image", "r/g:1", "--dry-run", *EXAMPLE,
               "--queue", "Team_A")  # fmt: skip
    assert bad.returncode == 2 and "--queue: 'Team_A' is not a Kubernetes object name" in bad.stderr


def test_multi_node_is_an_indexed_job_whose_pods_find_rank_zero():
    config_map, job, service = submit_dry_run("--nodes", "3", "--gpus", "4")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[0] == "launch" and args[args.index("--nproc-per-node") + 1] == "4"
    assert args[args.index("--main-address") + 1] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels(job).items()
    assert yaml.safe_load(config_map["data"]["config.yaml"])["checkpoint"]["url"] == "s3://bucket/runs/can256"


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    return job["spec"]["template"]["metadata"]["labels"]


def test_spot_pods_land_on_spot_nodes_and_wait_out_the_checkpoint_grace():
    for provider, placement in SPOT.items():
        pod = submit_dry_run("--spot", provider)[1]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == placement["nodeSelector"]
        assert all(toleration in pod["tolerations"] for toleration in placement["tolerations"])
        assert pod["terminationGracePeriodSeconds"] == 25 + 5  # checkpoint.grace_seconds + the exit margin
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert pod["securityContext"]["runAsNonRoot"] is True
        config = yaml.safe_load(submit_dry_run("--spot", provider)[0]["data"]["config.yaml"])
        assert config["checkpoint"]["preemption_notice"] == SPOT_NOTICE[provider]  # the cloud that warns this pod
    chosen_map = submit_dry_run("--spot", "gke", "checkpoint.preemption_notice=none")[0]
    chosen = yaml.safe_load(chosen_map["data"]["config.yaml"])
    assert chosen["checkpoint"]["preemption_notice"] == "none"  # a config's own choice wins


def test_a_local_config_is_refused_with_the_fields_named():
    result = gand("submit", "configs/can256.yaml", "--image", "x", "--dry-run")
    assert result.returncode == 2
    assert "data.path" in result.stderr and "checkpoint.url" in result.stderr
    secret = gand("submit", "configs/can256.yaml", "--image", "x", "--dry-run", "data.path=s3://b/p",
                  "checkpoint.url=s3://key:secret@b/r")  # fmt: skip
    assert secret.returncode == 2 and "credentials" in secret.stderr and "secret@" not in secret.stderr
    spot = gand("submit", "configs/can256.yaml", "--image", "x", "--dry-run", "--spot", "oci", *EXAMPLE)
    assert spot.returncode == 2 and "gke, eks, aks" in spot.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: overlays not built here")
@pytest.mark.parametrize("overlay", [*(f"{provider}-spot" for provider in SPOT), "multi-node", "kueue"])
def test_kustomize_overlays_give_exactly_what_gand_submit_renders(overlay):
    built = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in documents(built)}
    build = load_build()
    options = {"multi-node": build.MULTI_NODE, "kueue": build.KUEUE}.get(overlay) or {
        "spot": overlay.removesuffix("-spot")
    }
    for rendered in render_run(build.example_config(), SubmitOptions(image=build.IMAGE, **options)):
        assert objects[(rendered["kind"], rendered["metadata"]["name"])] == rendered
    validate(list(objects.values()))


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="no cluster: KUBECONFIG is not set")
def test_a_reachable_cluster_accepts_the_job_in_a_server_side_dry_run():
    from gand.k8s.cluster import create_objects

    objects = submit_dry_run()
    lines = create_objects(objects, objects[0]["metadata"]["namespace"], server_dry_run=True)
    assert len(lines) == len(objects) and all("validated" in line for line in lines)


# -- the exit-code contract: Kubernetes' podFailurePolicy semantics, applied to the rendered Job -------------------
def policy_action(job: dict[str, Any], exit_code: int, disrupted: bool = False) -> str:
    """What the Job controller does with a failed pod: the first matching rule's action, else 'Count'."""
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        on_codes = rule.get("onExitCodes")
        if on_codes and (exit_code in on_codes["values"]) == (on_codes["operator"] == "In"):
            return rule["action"]
        conditions = rule.get("onPodConditions", [])
        if disrupted and any(c["type"] == "DisruptionTarget" and c["status"] == "True" for c in conditions):
            return rule["action"]
    return "Count"


def test_pod_failure_policy_maps_gands_exit_codes():
    job = submit_dry_run()[1]
    assert policy_action(job, 75) == "Ignore"  # preempted and checkpointed: a new pod resumes
    assert policy_action(job, 2) == "FailJob"  # bad config: retrying cannot help
    assert policy_action(job, 3) == "FailJob"  # diverged after every roll-back
    assert policy_action(job, 1) == "Count"  # a crash: counts against backoffLimit
    assert policy_action(job, 137, disrupted=True) == "Ignore"  # evicted or the node went away
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_status_report_reads_the_clients_objects():
    from datetime import datetime, timezone

    from kubernetes.client import (
        V1ContainerState,
        V1ContainerStateTerminated,
        V1ContainerStatus,
        V1Job,
        V1JobCondition,
        V1JobStatus,
        V1ObjectMeta,
        V1Pod,
        V1PodCondition,
        V1PodStatus,
    )

    from gand.k8s.cluster import format_status

    def pod(name: str, minute: int, exit_code: int | None, disrupted: bool = False) -> V1Pod:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code)) if exit_code else None
        conditions = [V1PodCondition(type="DisruptionTarget", status="True", reason="PreemptionByScheduler")]
        return V1Pod(metadata=V1ObjectMeta(name=name, creation_timestamp=datetime(2026, 1, 1, 0, minute,
                                                                                  tzinfo=timezone.utc)),
                     status=V1PodStatus(phase="Failed" if exit_code else "Running",
                                        conditions=conditions if disrupted else [],
                                        container_statuses=[V1ContainerStatus(
                                            name="train", image="i", image_id="", ready=not exit_code,
                                            restart_count=0, state=state)]))  # fmt: skip

    job = V1Job(metadata=V1ObjectMeta(name="gand-can256", namespace="gan"),
                status=V1JobStatus(active=1, failed=2, conditions=[
                    V1JobCondition(type="FailureTarget", status="False", reason=None)]))  # fmt: skip
    text = format_status(job, [pod("b", 2, None), pod("a", 1, 75, disrupted=True)], "ckpt-1 (step 20) under s3://b")
    lines = text.splitlines()
    assert lines[0].startswith("job gan/gand-can256: active 1, succeeded 0, failed 2")
    assert "pods created: 2" in lines[1]
    assert lines[2].startswith("  a: Failed") and "exit 75 (preempted, checkpointed)" in lines[2]
    assert "disrupted (PreemptionByScheduler)" in lines[2] and lines[3] == "  b: Running"
    assert lines[-1] == "newest checkpoint: ckpt-1 (step 20) under s3://b"


def test_status_without_a_cluster_is_a_clear_error(tmp_path):
    result = gand("status", "can256", env={"KUBECONFIG": str(tmp_path / "missing")})
    assert result.returncode == 1 and "no cluster" in result.stderr and "Traceback" not in result.stderr


# -- the container image --------------------------------------------------------------------------------------------
DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_passes_hadolint():
    import sys

    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_gand_as_pid_1_non_root_on_a_pinned_base():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip()]
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["gand"]  # exec form: SIGTERM reaches gand
    assert [line for line in lines if line.startswith("USER")][-1] == "USER 1000:1000"
    base = next(line for line in lines if line.startswith("ARG BASE="))
    assert "latest" not in base and base.split(":")[-1][0].isdigit()


def test_constraints_pin_every_dependency_the_image_installs():
    import tomllib
    from packaging.requirements import Requirement

    pins = dict(line.split("==") for line in (REPO / "deploy" / "docker" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for line in project["dependencies"] + extras["deepspeed"] + extras["gcs"] + extras["k8s"] + extras["tensorboard"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        if name == "torch":
            continue  # from the base image
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    deepspeed_arg = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ARG DEEPSPEED"))
    assert deepspeed_arg.split("=")[1] == pins["deepspeed"]
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!gand/" in ignored  # the build context is only what the image copies

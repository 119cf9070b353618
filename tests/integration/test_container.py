"""The container's process contract, run for real on CPU: the image's entrypoint with the rendered Job's
arguments, a SIGTERM as Kubernetes sends it, the documented exit code, a committed checkpoint, and the Job's
podFailurePolicy applied to that code. Also `gand launch`, the multi-GPU/multi-node entry, keeping exit codes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from gand.checkpoint.manager import MANIFEST
from gand.k8s.render import CONFIG_DIR, CONFIG_FILE, SubmitOptions, render_run
from tests.conftest import REPO, free_port, gand, tiny_config
from tests.integration.preempt import Live, newest_valid
from tests.integration.test_deploy import policy_action

pytestmark = pytest.mark.integration


def entrypoint() -> list[str]:
    """The Dockerfile's exec-form ENTRYPOINT, resolved to this environment's console script."""
    line = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT"))
    program, *rest = json.loads(line.removeprefix("ENTRYPOINT"))
    return [str(Path(sys.executable).parent / program), *rest]


def rendered_job_and_config(tmp_path: Path, packed: Path, **options) -> tuple[dict, Path]:
    """Render the Job for a tiny run, then write its ConfigMap where the pod would see it (paths made local)."""
    from gand.config import load_config

    source = tiny_config(tmp_path, packed, train={"max_steps": 100_000, "log_every_steps": 1},
                         samples={"every_steps": 100_000}, checkpoint={"every_steps": 100_000})  # fmt: skip
    cfg = load_config(source, ["data.path=s3://stand-in/packed", "checkpoint.url=s3://stand-in/ckpt"])
    config_map, job, *_ = render_run(cfg, SubmitOptions(image="gand:test", **options))
    pod_config = yaml.safe_load(config_map["data"][CONFIG_FILE])
    # The pod reads s3://; here the same run reads the local fixture and writes a local store.
    pod_config["data"]["path"], pod_config["checkpoint"]["url"] = str(packed), str(tmp_path / "checkpoints")
    pod_config["run"]["dir"], pod_config["metrics"]["port"] = str(tmp_path / "run"), None
    mounted = tmp_path / "etc-gand" / CONFIG_FILE
    mounted.parent.mkdir()
    mounted.write_text(yaml.safe_dump(pod_config))
    return job, mounted


def container_command(job: dict, mounted: Path) -> list[str]:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return [*entrypoint(), *(str(mounted) if arg == f"{CONFIG_DIR}/{CONFIG_FILE}" else arg for arg in args)]


def test_sigterm_to_the_containers_process_checkpoints_exits_75_and_the_job_retries(tmp_path, packed):
    job, mounted = rendered_job_and_config(tmp_path, packed)
    live = Live(container_command(job, mounted))
    live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 3)
    live.proc.send_signal(signal.SIGTERM)  # what the kubelet sends first, terminationGracePeriodSeconds before KILL
    code = live.finish(timeout=job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    assert code == 75, live.output[-3000:]
    stopped = next(e for e in live.events() if e["event"] == "stopped_by_signal")
    committed = newest_valid(str(tmp_path / "checkpoints"))
    assert stopped["uploaded"] and committed == stopped["checkpoint"]
    manifest = json.loads((tmp_path / "checkpoints" / committed / MANIFEST).read_text())
    assert manifest["step"] == stopped["step"]
    assert policy_action(job, code) == "Ignore"  # not a failure: the Job starts a pod that resumes


def test_a_bad_config_in_the_container_fails_the_job_at_once(tmp_path, packed):
    job, mounted = rendered_job_and_config(tmp_path, packed)
    done = Live([*container_command(job, mounted), "train.batch_size=0"])
    code = done.finish(timeout=120)
    assert code == 2 and "train.batch_size" in done.output
    assert policy_action(job, code) == "FailJob"


def test_gand_launch_runs_the_ranks_and_passes_their_exit_code_on(tmp_path, packed):
    """The multi-GPU pods' command, on CPU with two processes: SIGTERM -> both ranks save -> 75, not 1."""
    job, mounted = rendered_job_and_config(tmp_path, packed, gpus=2)
    command = container_command(job, mounted)
    assert command[1] == "launch" and command[command.index("--nproc-per-node") + 1] == "2"
    live = Live(command, env={"ACCELERATE_USE_CPU": "true"})
    live.wait_for(lambda e: e["event"] == "train_step" and e["step"] >= 2)
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(timeout=120) == 75, live.output[-3000:]
    manifest = json.loads((tmp_path / "checkpoints" / newest_valid(str(tmp_path / "checkpoints")) /
                           MANIFEST).read_text())  # fmt: skip
    assert manifest["world_size"] == 2

    bad = gand("launch", "--nproc-per-node", "2", str(mounted), "train.batch_size=0")
    assert bad.returncode == 2 and "train.batch_size" in bad.stderr


def test_a_node_that_vanishes_makes_the_other_nodes_exit_75_not_1(tmp_path, packed):
    """Two nodes on one machine, as an Indexed Job's pods run them; node 1 is SIGKILLed (a spot VM gone past its
    grace) after the run's first commit. Node 0's rank finds its collective broken: that is a preemption of the
    run, with a commit to resume from, so it exits 75 (the Job ignores it) instead of 1 (which would count against
    backoffLimit). Without any commit it would be 1: exit 75 promises a checkpoint."""
    job, mounted = rendered_job_and_config(tmp_path, packed, gpus=1, nodes=2)
    port = str(free_port())
    nodes = [
        Live([*entrypoint(), "launch", "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(rank),
              "--main-address", "127.0.0.1", "--main-port", port, str(mounted), "checkpoint.every_steps=2"],
             env={"ACCELERATE_USE_CPU": "true"})
        for rank in (0, 1)
    ]  # fmt: skip
    committed = nodes[0].wait_for(lambda e: e["event"] == "checkpoint_committed")["checkpoint"]
    # The whole node at once: its launcher and its rank (torch's launcher starts ranks in their own sessions).
    node_1 = psutil.Process(nodes[1].proc.pid)
    for process in [*node_1.children(recursive=True), node_1]:
        process.kill()
    code = nodes[0].finish(timeout=120)
    assert code == 75, nodes[0].output[-3000:]
    lost = next(e for e in nodes[0].events() if e["event"] == "peer_lost")
    assert "connection" in lost["error"].lower() and lost["exit_code"] == 75 and lost["last_commit"] >= committed
    assert policy_action(job, code) == "Ignore"

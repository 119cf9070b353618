"""Stops as the world sends them (issue 18): to a launcher only, to the whole process group, twice, and while gand
waits on storage that is down. Real processes, real signals, a real S3-protocol server on 127.0.0.1 (moto)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time

import pytest
import s3fs

from gand.checkpoint.manager import MANIFEST
from tests.conftest import bin_path, free_port, make_bucket, tiny_config
from tests.integration.preempt import Live, newest_valid, rank_pids, running, train_command

pytestmark = pytest.mark.integration

ENDLESS = {"max_steps": 100_000, "log_every_steps": 1}


def endless_config(tmp_path, packed, **checkpoint):
    return tiny_config(tmp_path, packed, data={"workers": 2}, train=ENDLESS, samples={"every_steps": 100_000},
                       checkpoint={"every_steps": 100_000, **checkpoint})  # fmt: skip


def all_gone(group: int, config, timeout: float) -> bool:
    """Whether every process of the launcher's group, and every rank (torch starts each in its own session) of
    this config, has ended within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(group, group=True) and not rank_pids(str(config)):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def reaper():
    """SIGKILLs what a failed test leaves running: launcher groups and ranks."""
    started: list[tuple[Live, object]] = []
    yield lambda live, config: started.append((live, config)) or live
    for live, config in started:
        for pid in [live.proc.pid, *rank_pids(str(config)).values()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def committed_manifest(run_dir) -> dict:
    manifests = sorted((run_dir / "checkpoints").glob("ckpt-*/" + MANIFEST))
    assert manifests, "no committed checkpoint"
    return json.loads(manifests[-1].read_text())


def test_sigterm_to_gand_launch_with_two_ranks_commits_and_exits_75(tmp_path, packed, reaper):
    """The Kubernetes path: the pod's SIGTERM reaches `gand launch` only. Each rank saves its part, rank 0 commits,
    and the launcher's exit code is the ranks' 75."""
    config = endless_config(tmp_path, packed)
    live = reaper(Live([sys.executable, "-m", "gand.cli", "launch", "--nproc-per-node", "2", str(config)]), config)
    live.wait_for(lambda e: e.get("event") == "train_step" and e["step"] >= 3, timeout=180)
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(timeout=120) == 75, live.output[-3000:]
    stops = [e for e in live.events() if e.get("event") == "stopped_by_signal"]
    assert len(stops) == 2 and all(e["uploaded"] and e["exit_code"] == 75 for e in stops), live.output[-3000:]
    manifest = committed_manifest(tmp_path / "run")
    assert manifest["world_size"] == 2 and manifest["step"] == stops[0]["step"]
    assert all_gone(live.proc.pid, config, 5)
    # torch's agent runs in a thread (gand forwards the signals itself): its "could not register signal handlers"
    # warning would only alarm the user, so it is quieted.
    assert "Failed to register signal handlers" not in live.output
    # Two ranks share the node's cores (torchrun's command line sets 1 thread and warns; gand sets the share).
    if not os.environ.get("OMP_NUM_THREADS"):  # a setting of the user's own is kept as it is
        threads = [e for e in live.events() if e.get("event") == "threads_per_rank"]
        assert threads and threads[0]["ranks"] == 2
        assert threads[0]["omp_num_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_to_accelerate_launch_only_still_commits_and_leaves_nothing_behind(tmp_path, packed, processes,
                                                                                   reaper):  # fmt: skip
    """`accelerate launch` dies of a SIGTERM without forwarding it (exit 143, its own code): the trainer, tied to
    its launcher, gets a SIGTERM from the kernel, commits and exits; no process is left."""
    config = endless_config(tmp_path, packed)
    command = [bin_path("accelerate"), "launch", "--num_processes", str(processes), "--cpu", "-m", "gand.train",
               str(config)]  # fmt: skip
    live = reaper(Live(command), config)
    live.wait_for(lambda e: e.get("event") == "train_step" and e["step"] >= 3, timeout=180)
    live.proc.send_signal(signal.SIGTERM)  # the launcher only, as a container runtime or a supervisor does
    assert live.proc.wait(timeout=30) != 0  # the launcher's own code: accelerate does not report the ranks'
    assert all_gone(live.proc.pid, config, 40), "the trainer outlived its launcher:\n" + live.output[-3000:]
    stops = [e for e in live.events() if e.get("event") == "stopped_by_signal"]
    assert len(stops) == processes and all(e["uploaded"] for e in stops), live.output[-3000:]
    manifest = committed_manifest(tmp_path / "run")
    assert manifest["world_size"] == processes and manifest["step"] == stops[0]["step"]


# -- storage that is down --------------------------------------------------------------------------------------------
@pytest.fixture
def s3_down(monkeypatch):
    """Credentials and an endpoint on 127.0.0.1 where nothing listens: every request is refused."""
    variables = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


def test_a_stop_ends_the_start_up_wait_for_storage_within_seconds(tmp_path, packed, s3_down):
    """S3 down at start: listing checkpoints is retried, and a SIGTERM ends that wait in seconds, not after the
    upload timeout. No commit is known, so the exit code is 1, not 75."""
    config = endless_config(tmp_path, packed, url="s3://nowhere/run", retry_first_seconds=0.2, retry_max_seconds=1.0)
    live = Live(train_command(config))
    live.wait_for(lambda e: e.get("event") == "storage_retry", timeout=120)
    signalled = time.monotonic()
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(timeout=60) == 1, live.output[-3000:]
    assert time.monotonic() - signalled < 15
    stopped = next(e for e in live.events() if e.get("event") == "stopped_by_signal")
    assert stopped["last_commit"] is None and stopped["exit_code"] == 1
    assert "while waiting for storage at s3://nowhere/run at start-up" in live.output


def test_start_up_listing_gives_up_after_its_own_deadline(tmp_path, packed, s3_down):
    config = endless_config(tmp_path, packed, url="s3://nowhere/run", retry_first_seconds=0.2, retry_max_seconds=0.5,
                            startup_timeout_seconds=3)  # fmt: skip
    started = time.monotonic()
    live = Live(train_command(config))
    assert live.finish(timeout=120) == 1, live.output[-3000:]
    assert time.monotonic() - started < 60  # the upload timeout (900 s) would be far longer
    assert "still failing after" in live.output and "lease" in live.output  # the first start-up request: the lease


def test_a_second_sigterm_stops_at_once_and_the_last_commit_stays(tmp_path, packed, monkeypatch):
    """The first SIGTERM saves, but storage has gone down: the upload retries for up to the grace period. A second
    SIGTERM ends it at once, exit 1 (this step's save did not commit), and the last commit stays loadable."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    environment = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for name, value in environment.items():  # for make_bucket and newest_valid in this process
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made for another endpoint must not answer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"{make_bucket('second-signal')}/run"
        config = endless_config(tmp_path, packed, url=url, every_steps=3, grace_seconds=120,
                                retry_first_seconds=0.2, retry_max_seconds=1.0)  # fmt: skip
        live = Live(train_command(config), env=environment)
        first_commit = live.wait_for(lambda e: e.get("event") == "checkpoint_committed", timeout=120)["checkpoint"]
        server.stop()
        live.proc.send_signal(signal.SIGTERM)
        live.wait_for(lambda e: e.get("event") == "storage_retry", timeout=60)
        signalled = time.monotonic()
        live.proc.send_signal(signal.SIGTERM)
        assert live.finish(timeout=60) == 1, live.output[-3000:]
        assert time.monotonic() - signalled < 10  # not the 120 s grace period
        at_once = next(e for e in live.events() if e.get("event") == "stopped_at_once")
        assert at_once["last_commit"] >= first_commit
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # moto keeps its buckets in this process
        assert newest_valid(url) == at_once["last_commit"]
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


# -- one writer per run ----------------------------------------------------------------------------------------------
def manifests_by_writer(url: str) -> list[tuple[int, str]]:
    """(images seen, writer) of every committed checkpoint in the store, oldest first."""
    from gand.storage import Store

    store = Store(url)
    found = []
    for name in store.list_dir():
        if name.startswith("ckpt-") and store.exists(f"{name}/{MANIFEST}"):
            manifest = json.loads(store.read_bytes(f"{name}/{MANIFEST}"))
            found.append((manifest["images_seen"], manifest.get("writer")))
    return sorted(found)


def test_two_trainers_on_one_bucket_never_interleave_their_commits(tmp_path, packed, s3_endpoint, reaper):
    """The same command started twice: the second waits for the first's lease, then exits 2 with who holds it.
    Then the first is frozen (SIGSTOP, as a stalled VM) past its lease: a third trainer takes over after the
    expiry and trains on; the first, woken, publishes nothing more and exits 75."""
    url = f"{make_bucket('one-writer')}/run"
    settings = {"url": url, "every_steps": 4, "lease_seconds": 3, "lease_wait_seconds": 2}
    first = reaper(Live(train_command(endless_config(tmp_path / "first", packed, **settings))), tmp_path / "first")
    owner = first.wait_for(lambda e: e.get("event") == "lease_taken", timeout=120)["owner"]
    first.wait_for(lambda e: e.get("event") == "checkpoint_committed", timeout=120)

    second = Live(train_command(endless_config(tmp_path / "second", packed, **settings)))
    assert second.finish(timeout=60) == 2, second.output[-3000:]
    assert "another trainer writes checkpoints to s3://one-writer/run" in second.output
    assert not any(e.get("event") == "train_step" for e in second.events())

    first.proc.send_signal(signal.SIGSTOP)
    try:
        patient = {**settings, "lease_wait_seconds": 30}
        third = reaper(Live(train_command(endless_config(tmp_path / "third", packed, **patient))), tmp_path / "third")
        taken = third.wait_for(lambda e: e.get("event") == "lease_taken", timeout=60)
        third.wait_for(lambda e: e.get("event") == "checkpoint_committed", timeout=60)
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert first.finish(timeout=60) == 75, first.output[-3000:]
    assert any(e.get("event") == "stopped_lease_lost" for e in first.events())
    third.proc.send_signal(signal.SIGTERM)
    assert third.finish(timeout=60) == 75, third.output[-3000:]

    writers = [writer for _, writer in manifests_by_writer(url)]
    assert set(writers) == {owner, taken["owner"]}
    assert writers == sorted(writers, key=lambda w: w == taken["owner"])  # all of the first's, then the third's

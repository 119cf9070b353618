"""The run's lease on real stores: a local folder (lock file) and an S3-protocol server (conditional PUTs, moto)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import pytest

from gand.checkpoint.lease import LEASE, LeaseHeld, LeaseLost, RunLease
from gand.storage import Store
from tests.conftest import make_bucket


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "checkpoints"))
    request.getfixturevalue("s3_endpoint")
    return Store(f"{make_bucket(f'lease-{uuid.uuid4().hex[:12]}')}/run")


def test_one_holder_a_second_waits_then_is_refused_and_takes_it_once_released(store):
    first, second = RunLease(store, "a", 30), RunLease(store, "b", 30)
    first.acquire(0)
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="another trainer writes checkpoints"):
        second.acquire(1.5)
    assert 1.5 <= time.monotonic() - started < 10
    first.release()
    assert not store.exists(LEASE)
    second.acquire(0)
    with pytest.raises(LeaseLost):
        first.confirm()  # what a trainer checks before it would publish


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops_publishing(store):
    frozen = RunLease(store, "a", 0.6)
    frozen.acquire(0)  # and never renewed: a frozen or cut-off trainer
    successor = RunLease(store, "b", 30)
    started = time.monotonic()
    successor.acquire(10)
    assert time.monotonic() - started < 5  # waited for the expiry, not the full wait
    assert json.loads(store.read_bytes(LEASE))["owner"] == successor.owner
    with pytest.raises(LeaseLost):
        frozen.confirm()
    frozen.release()  # gives back nothing that is not its own
    assert json.loads(store.read_bytes(LEASE))["owner"] == successor.owner


def test_the_lease_of_a_process_gone_from_this_machine_is_free_at_once(store):
    dead_pid = os.fork()
    if dead_pid == 0:
        os._exit(0)  # the child ends at once; reaped below, its PID names no process
    os.waitpid(dead_pid, 0)
    holder = RunLease(store, "a", 300)
    holder.acquire(0)
    record = json.loads(store.read_bytes(LEASE))
    record["pid"] = dead_pid  # as a SIGKILLed trainer on this machine leaves it
    store.write_bytes(LEASE, json.dumps(record).encode())
    started = time.monotonic()
    RunLease(store, "b", 300).acquire(0)
    assert time.monotonic() - started < 5


def test_of_trainers_starting_at_the_same_moment_exactly_one_takes_the_lease(store):
    leases = [RunLease(store, f"t{index}", 30) for index in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(leases))

    def start(lease: RunLease) -> None:
        barrier.wait()
        try:
            lease.acquire(0)
            outcomes.append("took")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["took"]


def test_renewal_keeps_a_short_lease_alive(store):
    lease = RunLease(store, "a", 0.9)
    lease.acquire(0)
    lease.start_renewing()
    time.sleep(2.5)  # almost three lifetimes
    with pytest.raises(LeaseHeld):
        RunLease(store, "b", 0.9).acquire(0)
    lease.confirm()
    lease.release()

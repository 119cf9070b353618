"""Packing under fire: SIGKILL at random moments, and the daemon against a folder and an S3 endpoint."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fsspec
import pytest

from gand.data.demo import generate_landscapes
from gand.data.loader import ImageLoader
from gand.data.manifest import PackedManifest, read_parts
from gand.processes import children
from gand.storage import Store
from tests.conftest import REPO, free_port, make_bucket
from tests.corpus import build_bad_corpus, pattern, save
from tests.integration.preempt import running

pytestmark = pytest.mark.integration
PACK_ARGS = ["--resolutions", "32,64,128,256", "--shard-size", "7", "--near-duplicates", "4", "--max-aspect", "10"]


def gand_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gand.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a kill takes the workers too, like a lost machine
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def listed_keys_and_check_published(dest: Path) -> list[str]:
    """Every shard the manifest lists exists, matches its checksum and has its part record; returns all keys."""
    manifest = PackedManifest.model_validate_json((dest / "manifest.json").read_bytes())
    parts = read_parts(Store(str(dest)))
    assert manifest.parts <= len(parts)
    for shards in manifest.shards.values():
        for shard in shards:
            data = (dest / shard.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard.sha256, f"{shard.path} listed but not as published"
    return [sample.key for part in parts[: manifest.parts] for sample in part.samples]


def test_sigkill_at_random_moments_then_restart_packs_every_image_exactly_once(tmp_path):
    src = tmp_path / "src"
    generate_landscapes(src / "art", count=240, seed=5, workers=2)
    build_bad_corpus(src / "bad")
    # A clean run, timed, is the reference: what to expect and how long a run lasts on this machine.
    started = time.monotonic()
    clean = gand_process("pack", str(src), str(tmp_path / "reference"), *PACK_ARGS, "--workers", "2")
    output, _ = clean.communicate(timeout=300)
    assert clean.returncode == 0, output[-3000:]
    run_seconds = time.monotonic() - started
    reference = PackedManifest.model_validate_json((tmp_path / "reference" / "manifest.json").read_bytes())
    expected_keys = sorted(s.key for part in read_parts(Store(str(tmp_path / "reference"))) for s in part.samples)
    assert len(expected_keys) == reference.num_samples > 200

    dest = tmp_path / "dest"
    rng = random.Random(20261122)
    kills = 0
    for _ in range(12):  # each restart has less left to do, so keep going until four kills have landed
        process = gand_process("pack", str(src), str(dest), *PACK_ARGS, "--workers", "2", "--generation-seconds", "0.3")
        time.sleep(rng.uniform(0.08, 0.45) * run_seconds)  # start-up, packing or publishing: wherever it lands
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        if (dest / "manifest.json").exists():
            keys = listed_keys_and_check_published(dest)
            assert len(keys) == len(set(keys))  # never a sample twice, even mid-way
        if kills == 4:
            break
    assert kills >= 3  # the runs really were cut short

    finish = gand_process("pack", str(src), str(dest), *PACK_ARGS, "--workers", "2")
    output, _ = finish.communicate(timeout=300)
    assert finish.returncode == 0, output[-3000:]
    keys = listed_keys_and_check_published(dest)
    assert sorted(keys) == expected_keys  # every accepted image exactly once
    manifest = PackedManifest.model_validate_json((dest / "manifest.json").read_bytes())
    assert manifest.skipped == reference.skipped  # and every skip counted once
    assert not list(dest.rglob("*.tmp-*"))


def wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def read_manifest_at(url: str) -> PackedManifest | None:
    try:
        with fsspec.open(f"{url}/manifest.json", "rb") as handle:
            return PackedManifest.model_validate_json(handle.read())
    except FileNotFoundError:
        return None
    except OSError:  # s3fs's FileExpired: the daemon replaced the manifest between two reads; poll again
        return None


def run_daemon_and_add_images(src_url: str, dest_url: str, add_images, promtool: str) -> str:
    port = free_port()
    daemon = gand_process("daemon", src_url, dest_url, "--resolutions", "32", "--shard-size", "4", "--workers", "1",
                          "--interval", "0.5", "--metrics-port", str(port))  # fmt: skip
    try:
        first = wait_for(lambda: read_manifest_at(dest_url), what="generation 1")
        assert first.generation == 1 and first.num_samples == 5
        add_images()
        second = wait_for(lambda: (m := read_manifest_at(dest_url)) and m.num_samples == 8 and m, what="new images")
        assert second.generation >= 2
        assert second.shards_at(32)[: len(first.shards_at(32))] == first.shards_at(32)  # appended, not rewritten
        # The poll records its metrics just after publishing the manifest: scrape until they have caught up.
        packed_all = "gand_pack_images_packed_total 8.0"
        metrics = wait_for(
            lambda: text if packed_all in (text := scrape(port)) else None, what="the second poll's metrics"
        )
        assert "gand_pack_last_success_timestamp_seconds" in metrics
        assert f"gand_pack_manifest_generation {float(second.generation)}" in metrics
        checked = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True)
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, output[-3000:]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines if "logger" not in line]  # gand's own, not library lines
    assert "stop_requested" in events and events[-1] == "daemon_stopped", output[-3000:]
    return output


def test_daemon_packs_new_images_from_a_folder(tmp_path, promtool):
    src, dest = tmp_path / "src", tmp_path / "dest"
    for index in range(5):
        save(pattern("blobs", seed=index), src / f"{index}.png")

    def add_images():
        for index in range(5, 8):
            save(pattern("blobs", seed=index), src / f"{index}.png")

    run_daemon_and_add_images(str(src), str(dest), add_images, promtool)


def test_daemon_on_s3_and_training_reads_from_s3(s3_endpoint, tmp_path, promtool):
    bucket = make_bucket("gand-daemon")
    fs = fsspec.filesystem("s3")
    local = tmp_path / "images"
    for index in range(8):
        save(pattern("blobs", seed=40 + index), local / f"{index}.png")
    for index in range(5):
        fs.put_file(str(local / f"{index}.png"), f"{bucket}/raw/{index}.png")

    def add_images():
        for index in range(5, 8):
            fs.put_file(str(local / f"{index}.png"), f"{bucket}/raw/{index}.png")

    run_daemon_and_add_images(f"{bucket}/raw", f"{bucket}/packed", add_images, promtool)
    batch = next(ImageLoader(f"{bucket}/packed", 32, 4, seed=0, workers=0).batches())
    assert batch.images.shape == (4, 3, 32, 32) and batch.position.generation >= 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_daemons_whole_group_mid_pack_stops_it_cleanly(tmp_path, signum):
    """systemd or `kill -- -PGID` signal the pack workers too: they leave the decision to the daemon, which
    publishes what is complete within its time limit and exits 0; a later pack finishes the job, each image once."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    generate_landscapes(src / "art", count=160, seed=7, workers=2)
    daemon = gand_process("daemon", str(src), str(dest), *PACK_ARGS, "--workers", "2", "--generation-seconds", "0.3",
                          "--interval", "3600")  # fmt: skip
    lines = []
    for line in daemon.stdout:
        lines.append(line)
        if '"generation_published"' in line:
            break  # mid-pack: parts are being written and published
    workers = children(daemon.pid)  # the pack workers (in their own session) and multiprocessing's tracker
    assert len(workers) >= 2
    signalled = time.monotonic()
    os.killpg(daemon.pid, signum)
    try:
        output, _ = daemon.communicate(timeout=60)
    finally:
        os.killpg(daemon.pid, signal.SIGKILL) if daemon.poll() is None else None
    output = "".join(lines) + output
    assert daemon.returncode == 0, output[-3000:]
    assert time.monotonic() - signalled < 30
    assert "Traceback" not in output and '"daemon_stopped"' in output
    wait_for(lambda: not running(daemon.pid, group=True) and not any(map(running, workers)), timeout=10,
             what="the pack workers to end")  # fmt: skip
    partial = listed_keys_and_check_published(dest)
    assert 0 < len(partial) < 140 and len(partial) == len(set(partial))

    finish = gand_process("pack", str(src), str(dest), *PACK_ARGS, "--workers", "2")
    output, _ = finish.communicate(timeout=300)
    assert finish.returncode == 0, output[-3000:]
    keys = listed_keys_and_check_published(dest)
    manifest = PackedManifest.model_validate_json((dest / "manifest.json").read_bytes())
    assert len(keys) == len(set(keys)) and len(keys) + sum(manifest.skipped.values()) == 160  # each image once

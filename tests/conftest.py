"""Shared fixtures: a small built-in collection and its packed shards, made once per test session."""

from __future__ import annotations

import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gand.data.demo import generate_landscapes
from gand.data.pack import PackOptions, pack

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = 48  # 4 styles x 12; a few are 100x100 thumbnails that --min-side drops


def pytest_collection_modifyitems(config, items):
    """GPU tests run where there is a GPU; elsewhere (CI, this project's CPU machines) they are skipped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("raw")
    generate_landscapes(dest, count=DEMO_IMAGES, seed=0, workers=1)
    return dest


@pytest.fixture(scope="session")
def packed(demo_raw, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("packed")
    pack(str(demo_raw), str(dest), PackOptions(resolutions=(32, 64), shard_size=8, min_side=128, workers=1))
    return dest


@pytest.fixture(scope="session")
def packed_all(demo_raw, tmp_path_factory) -> Path:
    """The labelled demo set at every standard resolution, for the per-config training tests."""
    dest = tmp_path_factory.mktemp("packed_all")
    options = PackOptions(resolutions=(28, 32, 64, 128, 256), shard_size=16, min_side=256, workers=2)
    pack(str(demo_raw), str(dest), options)
    return dest


def tiny_config(tmp_path: Path, packed: Path, **sections) -> Path:
    """A config for a tiny, fast CPU run on the packed fixture; `sections` override whole keys."""
    config = {
        "run": {"name": "tiny", "dir": str(tmp_path / "run")},
        "data": {"path": str(packed), "resolution": 32, "workers": 0},
        "model": {"arch": "dcgan", "width": 0.125, "latent_dim": 16},
        "train": {"batch_size": 8, "max_steps": 4, "log_every_steps": 1},
        "samples": {"every_steps": 2, "count": 16},
        "checkpoint": {"every_steps": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_command(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's environment; capture text output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def gand(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "gand.cli", *args], timeout=timeout, env=env)


def on_terminal(*args: str) -> tuple[int, str]:
    """Run `gand ARGS` with stdout and stderr on a pseudo-terminal, as a person at a shell sees it."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "gand.cli", *args], stdout=terminal, stderr=terminal,
                               cwd=REPO, env={**os.environ, "GAND_LOG_FORMAT": "json"})  # fmt: skip
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    if process.poll() is None and time.monotonic() >= deadline:
        process.kill()
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server on 127.0.0.1 (moto), with the standard variables s3fs and boto read set."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's own checker; `make test` installs it (Debian's prometheus package)."""
    import shutil

    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run `make test` (it installs it as root) or apt-get install prometheus")
    return found

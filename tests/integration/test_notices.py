"""Spot notices (issue 18): each provider's metadata protocol served from 127.0.0.1 (never the real link-local
address), the quickstart config training against it, and a commit within 10 s of the notice."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO, free_port
from tests.integration.preempt import Live

pytestmark = pytest.mark.integration

AWS_TOKEN = "imitation-token"


class Imitation(ThreadingHTTPServer):
    """One provider's instance metadata service: no notice until `preempting` is set. Requests without the
    provider's required headers get the provider's error, as the real services answer them."""

    def __init__(self, provider: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.provider = provider
        self.preempting = False
        self.refused: list[str] = []  # requests that lacked what the protocol requires
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Imitation

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, code: int) -> None:
        self.server.refused.append(f"{self.command} {self.path}")
        self._answer(code)

    def do_PUT(self) -> None:
        if self.server.provider == "aws" and self.path == "/latest/api/token":
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._refuse(400)
            return self._answer(200, AWS_TOKEN.encode())
        self._refuse(404)

    def do_GET(self) -> None:
        provider, preempting = self.server.provider, self.server.preempting
        if provider == "aws" and self.path == "/latest/meta-data/spot/instance-action":
            if self.headers.get("X-aws-ec2-metadata-token") != AWS_TOKEN:
                return self._refuse(401)  # IMDSv2 only: no token, no answer
            if not preempting:
                return self._answer(404)
            return self._answer(200, json.dumps({"action": "terminate", "time": "2026-11-30T15:00:00Z"}).encode())
        if provider == "gcp" and self.path == "/computeMetadata/v1/instance/preempted":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._refuse(403)
            return self._answer(200, b"TRUE" if preempting else b"FALSE")
        if provider == "azure" and self.path.startswith("/metadata/scheduledevents?api-version="):
            if self.headers.get("Metadata") != "true":
                return self._refuse(400)
            events = [{"EventId": "A1B2", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                       "Resources": ["gand-vm"], "EventStatus": "Scheduled",
                       "NotBefore": "Mon, 30 Nov 2026 15:00:00 GMT"}] if preempting else []  # fmt: skip
            return self._answer(200, json.dumps({"DocumentIncarnation": 2, "Events": events}).encode())
        self._refuse(404)


def notices_counted(port: int, provider: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'gand_preemption_notices_total{{provider="{provider}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_a_preemption_notice_commits_within_10_s_and_training_goes_on(tmp_path, packed, provider):
    imitation = Imitation(provider)
    metrics_port = free_port()
    command = [sys.executable, "-m", "gand.cli", "train", str(REPO / "configs" / "quickstart.yaml"),
               f"data.path={packed}", f"run.dir={tmp_path / 'run'}", "train.max_steps=100000",
               "train.log_every_steps=1", "samples.every_steps=100000", "checkpoint.every_steps=100000",
               f"metrics.port={metrics_port}", f"checkpoint.preemption_notice={provider}",
               f"checkpoint.notice_endpoint={imitation.url}"]  # fmt: skip
    live = Live(command)
    try:
        live.wait_for(lambda e: e.get("event") == "train_step" and e["step"] >= 2, timeout=120)
        assert not any(e.get("event") == "preemption_notice" for e in live.events())
        imitation.preempting = True
        noticed_at = time.monotonic()
        commit = live.wait_for(lambda e: e.get("event") == "checkpoint_committed", timeout=20)
        assert time.monotonic() - noticed_at < 10, "the notice's checkpoint took too long"
        notice = next(e for e in live.events() if e.get("event") == "preemption_notice")
        assert notice["provider"] == provider and notice["detail"]
        assert commit["checkpoint"].endswith(f"{notice['step'] * 64:012d}")  # saved at the step the ranks agreed on
        live.wait_for(lambda e: e.get("event") == "train_step" and e["step"] >= notice["step"] + 3)  # trains on
        assert notices_counted(metrics_port, provider) == 1
        assert imitation.refused == [], "requests without the protocol's headers"
        live.proc.send_signal(signal.SIGTERM)
        assert live.finish(timeout=60) == 75, live.output[-3000:]
        assert sum(e.get("event") == "preemption_notice" for e in live.events()) == 1  # acted on once
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
        imitation.shutdown()


def test_an_unreachable_notice_endpoint_is_logged_once_and_training_is_unaffected(tmp_path, packed):
    command = [
        sys.executable,
        "-m",
        "gand.cli",
        "train",
        str(REPO / "configs" / "quickstart.yaml"),
        f"data.path={packed}",
        f"run.dir={tmp_path / 'run'}",
        "train.max_steps=6",
        "train.log_every_steps=1",
        "metrics.port=null",
        "checkpoint.preemption_notice=aws",
        f"checkpoint.notice_endpoint=http://127.0.0.1:{free_port()}",
        "checkpoint.notice_poll_seconds=0.2",
    ]
    live = Live(command)
    assert live.finish(timeout=120) == 0, live.output[-3000:]
    warnings = [e for e in live.events() if e.get("event") == "preemption_notice_endpoint_unreachable"]
    assert len(warnings) == 1 and warnings[0]["provider"] == "aws"

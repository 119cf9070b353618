"""Spot/preemptible VM notices from the cloud's instance metadata service, polled off the training thread.

Clouds warn before they take a machine back; the training loop commits a checkpoint as soon as the ranks agree on a
notice (issue 18), then trains on until the SIGTERM or the machine goes. Each provider's protocol:

    aws    IMDSv2: PUT /latest/api/token (header X-aws-ec2-metadata-token-ttl-seconds), then
           GET /latest/meta-data/spot/instance-action with X-aws-ec2-metadata-token: 404 until a stop or
           termination is scheduled (about 2 minutes ahead), then JSON {"action": ..., "time": ...}.
           https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
    gcp    GET /computeMetadata/v1/instance/preempted with Metadata-Flavor: Google: "FALSE" until the VM is being
           preempted (about 30 s ahead), then "TRUE".
           https://cloud.google.com/compute/docs/instances/create-use-preemptible#detecting_if_an_instance_was_preempted
    azure  GET /metadata/scheduledevents?api-version=2020-07-01 with Metadata: true: JSON whose "Events" list holds
           an EventType "Preempt" event (at least 30 s ahead) for a Spot VM about to be evicted.
           https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events

Only the standard library talks to the endpoint (urllib), with short timeouts; an endpoint that cannot be reached
(not on that cloud, a firewall) is logged once and polled on, never an error for training.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("gand.notices")

# The link-local metadata addresses; tests and unusual set-ups pass their own (checkpoint.notice_endpoint).
DEFAULT_ENDPOINTS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
REQUEST_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Notice:
    provider: str
    detail: str  # what the endpoint said (action and time, event id), for the log


def check_aws(endpoint: str) -> Notice | None:
    token_request = urllib.request.Request(
        f"{endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    token = _read(token_request).decode()
    request = urllib.request.Request(
        f"{endpoint}/latest/meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token}
    )
    try:
        body = json.loads(_read(request))
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None  # nothing scheduled
        raise
    return Notice("aws", f"{body.get('action')} at {body.get('time')}")


def check_gcp(endpoint: str) -> Notice | None:
    request = urllib.request.Request(
        f"{endpoint}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"}
    )
    answer = _read(request).decode().strip().upper()
    return Notice("gcp", "instance/preempted is TRUE") if answer == "TRUE" else None


def check_azure(endpoint: str) -> Notice | None:
    request = urllib.request.Request(
        f"{endpoint}/metadata/scheduledevents?api-version=2020-07-01", headers={"Metadata": "true"}
    )
    events = json.loads(_read(request)).get("Events", [])
    preempt = [event for event in events if event.get("EventType") == "Preempt"]
    if not preempt:
        return None
    first = preempt[0]
    return Notice("azure", f"Preempt {first.get('EventId')} not before {first.get('NotBefore')}")


CHECKS: dict[str, Callable[[str], Notice | None]] = {"aws": check_aws, "gcp": check_gcp, "azure": check_azure}


def _read(request: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return response.read()


class NoticeWatcher:
    """Polls one provider every `poll_seconds` in a daemon thread until a notice comes (then stops polling).

    `notice` is None until then; reading it is all the training thread does."""

    def __init__(self, provider: str, endpoint: str | None = None, poll_seconds: float = 5.0):
        if provider not in CHECKS:
            raise ValueError(f"unknown provider {provider!r}; one of {sorted(CHECKS)}")
        self.provider = provider
        self.endpoint = (endpoint or DEFAULT_ENDPOINTS[provider]).rstrip("/")
        self.poll_seconds = poll_seconds
        self.notice: Notice | None = None
        self.failed_polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"gand-notices-{provider}", daemon=True)

    def start(self) -> NoticeWatcher:
        self._thread.start()
        log.info(
            "watching_for_preemption_notices",
            provider=self.provider,
            endpoint=self.endpoint,
            every_seconds=self.poll_seconds,
        )
        return self

    def close(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                notice = CHECKS[self.provider](self.endpoint)
            except (OSError, ValueError) as err:  # unreachable, refused, timed out, not JSON
                self.failed_polls += 1
                if self.failed_polls == 1:
                    log.warning(
                        "preemption_notice_endpoint_unreachable",
                        provider=self.provider,
                        endpoint=self.endpoint,
                        error=str(err)[:200],
                        effect="polling on",
                    )
            else:
                if notice is not None:
                    self.notice = notice
                    return
            self._stop.wait(max(0.0, self.poll_seconds - (time.monotonic() - started)))

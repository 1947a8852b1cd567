"""Ray's Jobs API: send a `Submission` to a cluster's dashboard and follow the job's logs
to a terminal status. The token goes in the Authorization header, so the caller needs
neither RAY_AUTH_MODE nor any other Ray setting in its environment."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from emoverse.submission import Submission, Token

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(RuntimeError):
    """The cluster could not be reached, refused us, or the job could not be submitted."""


@dataclass(frozen=True)
class JobOutcome:
    submission_id: str
    status: str  # a ray.job_submission.JobStatus value
    message: str


@contextmanager
def _address_wins(address: str):
    # JobSubmissionClient lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override its
    # address argument; an address given on our command line must win.
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def connect(address: str, token: Token | None):
    """A JobSubmissionClient for the dashboard at `address` (http://HOST:8265)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise JobsError(f"--address {address!r}: give the Ray dashboard's URL, "
                        "e.g. http://127.0.0.1:8265")
    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    try:
        with _address_wins(address):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        if token is None:
            raise JobsError(
                f"the Ray cluster at {address} requires a token and none was found "
                "(looked at $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token): "
                "give --token-file PATH (on a KubeRay cluster: the token Secret's value)"
            ) from None
        raise JobsError(f"the Ray cluster at {address} rejected the token from "
                        f"{token.source}: {str(exc).splitlines()[0]}") from None
    except ConnectionError as exc:
        raise JobsError(f"cannot reach a Ray dashboard at {address}: {exc} Is the cluster "
                        "up, and is this its dashboard address?") from None


def submit(client, submission: Submission) -> str:
    """Submit; the submission id (which a second submission with the same id refuses)."""
    try:
        return client.submit_job(entrypoint=submission.entrypoint,
                                 submission_id=submission.submission_id,
                                 runtime_env=submission.runtime_env,
                                 metadata=submission.metadata, **submission.resources)
    except (RuntimeError, ValueError) as exc:
        raise JobsError(f"submitting {submission.submission_id} failed: {exc}") from None


def follow(client, submission_id: str, write: Callable[[str], object] | None = None,
           poll: float = 1.0) -> JobOutcome:
    """Print the job's logs as they come, then wait for its terminal status."""
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream broke off; the status still tells
        write(f"\n[emoverse] log stream ended early ({exc}); waiting for the job's status\n")
    while True:
        outcome = status(client, submission_id)
        if outcome.status in TERMINAL:
            return outcome
        time.sleep(poll)


def status(client, submission_id: str) -> JobOutcome:
    try:
        info = client.get_job_info(submission_id)
    except RuntimeError as exc:  # the Jobs API answers 404 for an unknown id
        raise JobsError(f"no job {submission_id!r} on this cluster ({exc})") from None
    return JobOutcome(submission_id, str(getattr(info.status, "value", info.status)),
                      info.message or "")


def stop(client, submission_id: str) -> bool:
    try:
        return client.stop_job(submission_id)
    except RuntimeError as exc:
        raise JobsError(f"cannot stop job {submission_id!r}: {exc}") from None

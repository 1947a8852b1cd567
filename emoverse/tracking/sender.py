"""MLflow calls made in order on one background thread, so tracking never stalls training.

MLflow's client retries a failed request for minutes (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`,
with backoff), which is right for a rate-limited server and wrong for a training loop
that would wait on each step's metrics. Here the caller only queues a call. When the
oldest queued call has waited longer than `patience_s`, or a call fails, the outage is
logged once (and its end when calls go through again); `close` waits at most
`patience_s` for what is queued and then leaves it, saying how many calls were not sent.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from emoverse.console import logger

log = logger(__name__)
MAX_PENDING = 20_000  # calls queued during an outage; later ones are dropped


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer: raised before any training starts."""


def mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError("experiment tracking needs MLflow: pip install 'emoverse[tracking]' "
                          "(or set tracking.enabled=false)") from exc
    return MlflowClient(tracking_uri=uri)


class Sender:
    """An MLflow client whose calls run in order on a background thread."""

    def __init__(self, uri: str, patience_s: float = 30.0):
        self.uri, self.patience_s = uri, patience_s
        self.client = mlflow_client(uri)
        self._queue: queue.Queue = queue.Queue()
        self._oldest: float | None = None  # when the call now being sent was queued
        self._down = False
        self._dropped = 0
        self._thread = threading.Thread(target=self._send_all, name="mlflow-sender",
                                        daemon=True)  # a stuck request must not keep a process
        self._thread.start()

    def submit(self, method: str, *args, **kwargs) -> Future:
        """Queue `client.<method>(*args, **kwargs)`; its Future holds the result."""
        done: Future = Future()
        self._notice_stall()
        if self._queue.qsize() >= MAX_PENDING:
            self._dropped += 1
            done.set_exception(TrackingUnreachable(f"MLflow at {self.uri}: queue full"))
            return done
        self._queue.put((time.monotonic(), method, args, kwargs, done))
        return done

    def call(self, method: str, *args, **kwargs) -> Any:
        """`client.<method>(...)` through the queue, waiting for its result (at most
        `patience_s`); TrackingUnreachable when it does not come."""
        future = self.submit(method, *args, **kwargs)
        try:
            return future.result(timeout=self.patience_s)
        except TimeoutError:
            self._mark_down(f"no answer within {self.patience_s:.0f} s")
            raise TrackingUnreachable(f"MLflow at {self.uri} did not answer {method}") from None

    def close(self) -> None:
        """Send what is queued, waiting at most `patience_s`."""
        self._queue.put(None)
        self._thread.join(self.patience_s)
        left = self._queue.qsize() + (1 if self._thread.is_alive() else 0) + self._dropped
        if left:
            self._mark_down(f"no answer within {self.patience_s:.0f} s")
            log.warning("MLflow at %s: %d tracking calls not sent (the server did not answer "
                        "within %.0f s); the run directory keeps the record", self.uri, left,
                        self.patience_s)

    def check(self, timeout: float = 15.0) -> None:
        """Raise TrackingUnreachable, naming the URI, unless the server answers now."""
        parsed = urlparse(self.uri)
        if parsed.scheme in ("http", "https"):  # a refused connection fails at once
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            except OSError as exc:
                raise TrackingUnreachable(self._unreachable(exc)) from None
        try:
            self.submit("search_experiments", max_results=1).result(timeout=timeout)
        except TimeoutError:
            raise TrackingUnreachable(self._unreachable(f"no answer within {timeout:.0f} s")) \
                from None
        except Exception as exc:
            raise TrackingUnreachable(self._unreachable(exc)) from None

    def _unreachable(self, why) -> str:
        return (f"MLflow tracking server {self.uri} is unreachable ({why}); start it, point "
                "tracking.uri or MLFLOW_TRACKING_URI at one that runs, or set "
                "tracking.enabled=false")

    def _send_all(self) -> None:
        while (item := self._queue.get()) is not None:
            queued, method, args, kwargs, done = item
            self._oldest = queued
            try:
                done.set_result(getattr(self.client, method)(*args, **kwargs))
            except Exception as exc:
                done.set_exception(exc)
                self._mark_down(f"{type(exc).__name__}: {exc}")
            else:
                if self._down:
                    self._down = False
                    log.warning("MLflow at %s answers again", self.uri)
            finally:
                self._oldest = None

    def _notice_stall(self) -> None:
        oldest = self._oldest
        if oldest is not None and time.monotonic() - oldest > self.patience_s:
            self._mark_down(f"a call has waited {time.monotonic() - oldest:.0f} s")

    def _mark_down(self, why: str) -> None:
        if not self._down:
            self._down = True
            log.warning("MLflow at %s is not answering (%s); training goes on and the run "
                        "directory keeps the record", self.uri, str(why)[:300])


@dataclass(frozen=True)
class StepTracking:
    """Where a stage's process of rank 0 logs its step metrics: part of its `StageJob`."""

    uri: str
    run_id: str
    patience_s: float = 30.0


class StepLog:
    """A stage's step metrics into its MLflow run, from the process of rank 0."""

    KEYS = ("loss", "lr", "samples_per_second", "data_wait_fraction")

    def __init__(self, tracking: StepTracking):
        self.run_id = tracking.run_id
        self.sender = Sender(tracking.uri, tracking.patience_s)

    def log(self, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.sender.submit("log_batch", self.run_id, metrics=[
            Metric(key, float(metrics[key]), now, step) for key in self.KEYS if key in metrics])

    def close(self) -> None:
        self.sender.close()


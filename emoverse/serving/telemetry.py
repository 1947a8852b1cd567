"""What the serving layer measures, without Ray: the API calls a `Telemetry`.

The Serve application records into Ray's metrics (`emoverse.serving.app.RayTelemetry`,
exported for Prometheus on each node's metrics port); tests without Ray use `Recorded`.
Names (Ray adds `ray_` in front, Prometheus `_total` / `_bucket` behind):

    emoverse_requests          counter    route, task, model, status
    emoverse_request_ms        histogram  route, status        whole request at the gateway
    emoverse_media_ms          histogram  task                 decode, sample, detect, crop
    emoverse_queue_ms          histogram  model                waiting for the model replica
    emoverse_generate_ms       histogram  model                the batch's generation
    emoverse_first_token_ms    histogram  model                streamed chats: first content
    emoverse_batch_size        histogram  model                requests per generation batch
    emoverse_parse_failures    counter    task, model          answers that did not parse
    emoverse_clips             counter    task, face_found     face-found rate = true / all
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


class Telemetry(Protocol):
    def request(self, route: str, task: str, model: str, status: int, ms: float) -> None: ...

    def answered(self, task: str, model: str, media_ms: float, queue_ms: float,
                 generate_ms: float, face_found: bool, parsed: bool | None) -> None: ...

    def first_token(self, model: str, ms: float) -> None: ...

    def batch(self, model: str, size: int) -> None: ...


class NoTelemetry:
    def request(self, *args) -> None:
        pass

    def answered(self, *args) -> None:
        pass

    def first_token(self, *args) -> None:
        pass

    def batch(self, *args) -> None:
        pass


@dataclass
class Recorded:
    """Every call kept in lists, for tests."""

    requests: list[tuple] = field(default_factory=list)
    answers: list[tuple] = field(default_factory=list)
    first_tokens: list[tuple] = field(default_factory=list)
    batches: list[tuple] = field(default_factory=list)

    def request(self, *args) -> None:
        self.requests.append(args)

    def answered(self, *args) -> None:
        self.answers.append(args)

    def first_token(self, *args) -> None:
        self.first_tokens.append(args)

    def batch(self, *args) -> None:
        self.batches.append(args)

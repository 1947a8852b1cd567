"""Request handling without Ray: model choice, clip, prompt, token limit, model call, answer.

`Service` is what the HTTP routes call. The model deployment sits behind `Backend` (a
Serve deployment handle in production, an in-process `ModelPool` or a stub in tests).
Prompts come from the task modules (`Task.prompt`) and clips from the media stage's
code, so a served request reaches the model exactly as a training row does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

import numpy as np

from emoverse.recipe import MediaConfig
from emoverse.serving.auth import ApiKeys
from emoverse.serving.catalog import Catalog, build_catalog
from emoverse.serving.config import ServeArgs
from emoverse.serving.model_pool import Delta, Generation, Job
from emoverse.serving.errors import ServingError
from emoverse.serving.schemas import (AnalyzeRequest, AnalyzeResponse, ModelCard,
                                      StructuredAnswer, Timing, Usage)
from emoverse.serving.telemetry import NoTelemetry, Telemetry
from emoverse.serving.videos import ServedClip, VideoRef, VideoSource
from emoverse.tasks import TASK_NAMES, Answer, get_task
from emoverse.model.inputs import generation_collators

MODEL_HEADER = "serve_multiplexed_model_id"  # Serve's multiplexing header


@dataclass(frozen=True)
class HeardAudio:
    """Audio sent apart from the video: encoded bytes of a container such as wav or mp3."""

    data: bytes
    format: str
    field: str

    def decoded(self, media: MediaConfig) -> np.ndarray:
        """Mono samples at the served model's rate, cut as a clip's track is (its middle
        `max_seconds`); a 422 naming the field when they cannot be decoded."""
        import io

        from emoverse.media.audio import decode_audio
        from emoverse.media.clips import MediaError

        try:
            return decode_audio(io.BytesIO(self.data), media.audio, format=self.format)
        except MediaError as exc:
            raise ServingError(422, self.field, f"cannot use the audio: {exc}") from exc


class Backend(Protocol):
    async def generate(self, model_id: str, job: Job) -> Generation: ...

    def stream(self, model_id: str, job: Job) -> AsyncIterator[Delta]: ...

    async def status(self) -> dict: ...


@dataclass
class Outcome:
    """One generation for a request, with what it cost."""

    generation: Generation
    clip: ServedClip
    prompt_tokens: int
    media_ms: float
    model_ms: float


@dataclass
class Prepared:
    """A request's clip, checked against the token limit, ready for the model."""

    job: Job
    clip: ServedClip
    prompt_tokens: int
    media_ms: float


class Service:
    def __init__(self, args: ServeArgs, catalog: Catalog, processor: Any, backend: Backend,
                 telemetry: Telemetry | None = None, keys: ApiKeys | None = None):
        self.args = args
        self.catalog = catalog
        self.backend = backend
        self.telemetry = telemetry or NoTelemetry()
        self.keys = keys or ApiKeys(args.auth.api_keys_env, args.auth.api_keys_file)
        self.videos = VideoSource(catalog.media, args.limits, args.media_root)
        # token counting, with the audio's tokens for a model that hears
        self._collators = generation_collators(processor)
        self._started = int(time.time())

    @classmethod
    def create(cls, args: ServeArgs, backend: Backend,
               telemetry: Telemetry | None = None) -> "Service":
        from emoverse.model.checkpoint import load_processor

        catalog = build_catalog(args)
        # Token counting only: every served id shares the default's tokenizer.
        processor = load_processor(catalog.entry(catalog.default).base, args.trust_remote_code)
        return cls(args, catalog, processor, backend, telemetry)

    def model_id(self, requested: str | None, header: str | None) -> str:
        """The body's `model`, else the multiplexing header, else the default."""
        model_id = requested or header or self.catalog.default
        if model_id not in self.catalog.entries:
            field = "model" if requested else MODEL_HEADER
            raise ServingError(404, field, f"unknown model {model_id!r}; served models: "
                               f"{', '.join(self.catalog.entries)}")
        return model_id

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=e.id, created=self._started, kind=e.kind, base=e.base,
                          default=e.id == self.catalog.default)
                for e in self.catalog.entries.values()]

    async def health(self) -> dict:
        try:
            backend = await self.backend.status()
        except Exception as exc:  # the model deployment is down or unreachable
            raise ServingError(503, "model_server", f"not ready: {exc}") from exc
        return {"status": "ok", "default_model": self.catalog.default,
                "models": list(self.catalog.entries), "auth": self.keys.required,
                "max_upload_mb": self.args.limits.max_upload_mb, "model_server": backend}

    def budget(self, task: str | None, requested: int | None = None) -> int:
        cap = self.args.limits.max_new_tokens_cap
        if requested is not None and requested > cap:
            raise ServingError(422, "max_tokens", f"{requested} is over the {cap}-token cap "
                               "(limits.max_new_tokens_cap)")
        return requested or self.args.max_new_tokens.get(task or "", max(
            self.args.max_new_tokens.values()))

    async def prepare(self, model_id: str, prompt: str, video: VideoRef, budget: int,
                      text_field: str, audio: HeardAudio | None = None) -> Prepared:
        """Clip, audio and token check, off the event loop. `audio`: sound given apart
        from the video (chat's `input_audio`), heard instead of the clip's own track."""
        start = time.perf_counter()
        clip, sound, tokens = await asyncio.to_thread(
            self._prepare, model_id, prompt, video, budget, text_field, audio)
        return Prepared(Job(prompt, clip.frames, budget, sound), clip, tokens,
                        (time.perf_counter() - start) * 1000)

    async def run(self, model_id: str, prompt: str, video: VideoRef, budget: int,
                  text_field: str, audio: HeardAudio | None = None) -> Outcome:
        """The prepared request's model call."""
        ready = await self.prepare(model_id, prompt, video, budget, text_field, audio)
        start = time.perf_counter()
        generation = await self.backend.generate(model_id, ready.job)
        return Outcome(generation, ready.clip, ready.prompt_tokens, ready.media_ms,
                       (time.perf_counter() - start) * 1000)

    def observe(self, task: str | None, model_id: str, out: Outcome,
                answer: Answer | None) -> None:
        """The answered request's figures, for the metrics."""
        self.telemetry.answered(task or "none", model_id, out.media_ms,
                                max(out.model_ms - out.generation.generate_ms, 0.0),
                                out.generation.generate_ms, out.clip.face_found,
                                None if answer is None else answer.ok)

    def _prepare(self, model_id: str, prompt: str, video: VideoRef, budget: int,
                 text_field: str, given: HeardAudio | None
                 ) -> tuple[ServedClip, np.ndarray | None, int]:
        hears = self.catalog.entry(model_id).hears
        if given is not None and not hears:
            raise ServingError(422, given.field, f"model {model_id!r} was not trained to hear "
                               "audio; send the video alone, or ask a model whose stages "
                               "set audio: true")
        clip = self.videos.clip(video)
        sound = (given.decoded(self.catalog.media) if given is not None else clip.audio) \
            if hears else None
        row = {"prompt": [prompt], "frames": [clip.frames]}
        if hears:
            row.update(audio=[sound], audio_samples=[len(sound)])
        tokens = int(self._collators[hears](row)["input_ids"].shape[1])
        limit = self.catalog.max_input_tokens
        if tokens + budget > limit:
            raise ServingError(422, text_field, f"too long for the model: {tokens} prompt and "
                               f"video tokens + {budget} answer tokens > {limit} "
                               "(limits.max_input_tokens)")
        return clip, sound, tokens

    async def analyze(self, req: AnalyzeRequest, video: VideoRef,
                      model_id: str) -> AnalyzeResponse:
        start = time.perf_counter()
        budget = self.budget(req.task)
        field = "conversation" if get_task(req.task).needs_conversation else "transcript"
        out = await self.run(model_id, req.prompt(), video, budget, field)
        answer = get_task(req.task).parse(out.generation.text)
        self.observe(req.task, model_id, out, answer)
        return AnalyzeResponse(
            task=req.task, model=model_id, answer=structured(req.task, answer),
            parse_error=answer.error, raw=out.generation.text,
            face_found=out.clip.face_found, media_cached=out.clip.cached,
            usage=usage(out), timing=timing(out, start),
            frames=jpeg_urls(out.clip.frames) if req.include_frames else None)


def usage(out: Outcome) -> Usage:
    done = out.generation.completion_tokens
    return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=done,
                 total_tokens=out.prompt_tokens + done)


def timing(out: Outcome, start: float) -> Timing:
    return Timing(media_ms=round(out.media_ms, 2), model_ms=round(out.model_ms, 2),
                  generate_ms=round(out.generation.generate_ms, 2),
                  batch_size=out.generation.batch_size,
                  total_ms=round((time.perf_counter() - start) * 1000, 2))


def jpeg_urls(frames) -> list[str]:
    """The crops the model saw (RGB arrays), as JPEG data URLs for a page to show."""
    import base64

    import cv2

    urls = []
    for frame in frames:
        ok, data = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        urls.append("data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode())
    return urls


def structured(task: str, answer: Answer) -> StructuredAnswer | None:
    """The task's parsed value in the response's shape; None when it did not parse."""
    return StructuredAnswer(**get_task(task).answer_fields(answer.value)) if answer.ok else None


def task_of_prompt(prompt: str) -> str | None:
    """The task whose tag a verbatim prompt carries (to parse the answer), if any."""
    return next((t for t in TASK_NAMES if get_task(t).tag in prompt), None)

"""`POST /v1/chat/completions`: OpenAI-style chat with a video content part.

The model is trained on one user turn (a video and a prompt) under a fixed system
prompt, so a request carries one user message with one `video_url` part and text, and,
for a model trained to hear, at most one `input_audio` part (OpenAI's: base64 wav or
mp3), heard instead of the video's own audio track. With
emoverse's `task` field (OpenAI clients: `extra_body`), the text is the transcript and
the prompt is the task's training prompt, as in `/v1/analyze`; without it the text is
the prompt verbatim, and the answer is parsed when the prompt carries a task tag.
Video URLs: `data:video/...;base64,...` (an upload) or a path under the media root
(`file://` optional). Remote URLs are not fetched. Decoding is greedy; sampling
parameters are accepted and ignored. `stream: true` answers as server-sent events of
`chat.completion.chunk`s ending with `data: [DONE]`; the clip is processed and the first
token awaited before the stream opens, so refusals (and overload) are still plain 4xx/503.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import time
import uuid
from contextlib import contextmanager
from typing import AsyncIterator, Iterator

from pydantic import ValidationError

from emoverse.serving.config import Limits
from emoverse.serving.errors import ServingError, invalid
from emoverse.serving.model_pool import Delta
from emoverse.serving.requests import (HeardAudio, Outcome, Service, structured,
                                       task_of_prompt, timing, usage)
from emoverse.serving.schemas import (ChatCompletionChunk, ChatRequest, ChunkChoice,
                                      ChunkDelta, ContentPart, EmoverseExtras, TaskInput)
from emoverse.serving.videos import VideoRef
from emoverse.tasks import get_task

logger = logging.getLogger(__name__)


def user_turn(req: ChatRequest, limits: Limits
              ) -> tuple[str, tuple[str, str], HeardAudio | None]:
    """(text, (field, url), audio) of the request's single user message."""
    if any(m.role == "assistant" for m in req.messages):
        raise ServingError(422, "messages", "only one user turn is supported (the model is "
                           "trained on single-turn prompts); drop the assistant turns")
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if len(users) != 1:
        raise ServingError(422, "messages", f"needs exactly one user message, got {len(users)}")
    index = users[0]
    content = req.messages[index].content
    parts = [ContentPart(type="text", text=content)] if isinstance(content, str) else content
    videos = [(f"messages.{index}.content.{j}.video_url", p.video_url.url)
              for j, p in enumerate(parts) if p.type == "video_url" and p.video_url]
    if len(videos) != 1:
        raise ServingError(422, f"messages.{index}.content", "needs exactly one video_url "
                           f"part, got {len(videos)}")
    text = "\n".join(p.text for p in parts if p.type == "text" and p.text).strip()
    return text, videos[0], heard_audio(parts, f"messages.{index}.content", limits)


def base64_payload(payload: str, limits: Limits, what: str, field: str,
                   data_field: str) -> bytes:
    """A base64 payload decoded, refused first when it would be over the upload limit (413
    on `field`) and when it is malformed (422 on `data_field`)."""
    if len(payload) * 3 // 4 > limits.max_upload_bytes:
        raise ServingError(413, field, f"{what} is over the {limits.max_upload_mb:g} MiB limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServingError(422, data_field, f"malformed base64 data: {exc}") from exc


def heard_audio(parts: list[ContentPart], field: str, limits: Limits) -> HeardAudio | None:
    """The message's `input_audio` part, decoded from base64 (at most one)."""
    sounds = [(f"{field}.{j}.input_audio", p.input_audio) for j, p in enumerate(parts)
              if p.type == "input_audio"]
    if not sounds:
        return None
    if len(sounds) > 1:
        raise ServingError(422, field, f"at most one input_audio part, got {len(sounds)}")
    where, part = sounds[0]
    if part is None:
        raise ServingError(422, where, "an input_audio part needs its input_audio object "
                           "({data, format})")
    data = base64_payload(part.data, limits, "audio", where, f"{where}.data")
    if not data:
        raise ServingError(422, f"{where}.data", "empty audio")
    return HeardAudio(data, part.format, where)


@contextmanager
def chat_video(service: Service, field: str, url: str) -> Iterator[VideoRef]:
    """The video of a `video_url` part: a base64 data URL or a path under the media root."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ServingError(422, field, "data URLs must be base64-encoded")
        data = base64_payload(payload, service.args.limits, "video", field, field)
        kind = header[len("data:"):].split(";")[0] or None
        with service.videos.uploaded(io.BytesIO(data), kind, None, field) as video:
            yield video
        return
    if "://" in url and not url.startswith("file://"):
        raise ServingError(400, field, "remote video URLs are not fetched; send a data URL "
                           "or a path under the media root")
    yield service.videos.stored(url.removeprefix("file://"), field)


def prompt_of(req: ChatRequest, text: str) -> tuple[str, str | None]:
    """(prompt, task): the task's training prompt, or the user's text verbatim."""
    if req.task is None:
        if not text:
            raise ServingError(422, "messages", "the user message has no text")
        return text, task_of_prompt(text)
    try:
        inputs = TaskInput(task=req.task, transcript=text or None,
                           conversation=req.conversation, target_utterance=req.target_utterance)
    except ValidationError as exc:
        raise invalid(exc) from None
    return inputs.prompt(), inputs.task


def _inputs(service: Service, req: ChatRequest, header: str | None):
    """(model id, task, prompt, answer budget, (field, video url), audio) of a chat
    request."""
    if req.n != 1:
        raise ServingError(400, "n", "only n=1 is supported (decoding is greedy)")
    model_id = service.model_id(req.model, header)
    text, video, audio = user_turn(req, service.args.limits)
    prompt, task = prompt_of(req, text)
    return model_id, task, prompt, service.budget(task, req.max_completion_tokens
                                                  or req.max_tokens), video, audio


def _extras(service: Service, task: str | None, model_id: str, out: Outcome,
            start: float) -> EmoverseExtras:
    parsed = get_task(task).parse(out.generation.text) if task else None
    service.observe(task, model_id, out, parsed)
    return EmoverseExtras(task=task, answer=structured(task, parsed) if parsed else None,
                          parse_error=parsed.error if parsed else None,
                          face_found=out.clip.face_found, timing=timing(out, start))


def _finish(out: Outcome, budget: int) -> str:
    return "length" if out.generation.completion_tokens >= budget else "stop"


async def complete(service: Service, req: ChatRequest, header: str | None = None) -> dict:
    start = time.perf_counter()
    model_id, task, prompt, budget, (field, url), audio = _inputs(service, req, header)
    with chat_video(service, field, url) as video:
        out = await service.run(model_id, prompt, video, budget, "messages", audio)
    raw = out.generation.text
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": raw},
                     "finish_reason": _finish(out, budget)}],
        "usage": usage(out).model_dump(),
        "emoverse": _extras(service, task, model_id, out, start).model_dump(),
    }


async def stream(service: Service, req: ChatRequest,
                 header: str | None = None) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed chat, once its first delta is in hand."""
    start = time.perf_counter()
    model_id, task, prompt, budget, (field, url), audio = _inputs(service, req, header)
    with chat_video(service, field, url) as video:
        ready = await service.prepare(model_id, prompt, video, budget, "messages", audio)
    asked = time.perf_counter()
    deltas = service.backend.stream(model_id, ready.job).__aiter__()
    try:
        first = await deltas.__anext__()
    except StopAsyncIteration:
        raise ServingError(500, "server", "the model deployment streamed nothing") from None
    service.telemetry.first_token(model_id, (time.perf_counter() - start) * 1000)
    chunk = _chunker(model_id, bool(req.stream_options and req.stream_options.include_usage))

    async def events() -> AsyncIterator[bytes]:
        delta: Delta = first
        try:
            yield chunk(ChunkDelta(role="assistant", content=""))
            while True:
                if delta.text:
                    yield chunk(ChunkDelta(content=delta.text))
                if delta.done is not None:
                    break
                delta = await deltas.__anext__()
            out = Outcome(delta.done, ready.clip, ready.prompt_tokens, ready.media_ms,
                          (time.perf_counter() - asked) * 1000)
            yield chunk(ChunkDelta(), _finish(out, budget),
                        extras=_extras(service, task, model_id, out, start), out=out)
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # the stream is open: the error goes in it
            logger.exception("streamed chat failed", exc_info=exc)
            error = ServingError(500, "server", f"internal error ({type(exc).__name__})")
            yield f"data: {json.dumps(error.body())}\n\n".encode()
        finally:
            await deltas.aclose()

    return events()


def _chunker(model_id: str, include_usage: bool):
    """Makes the stream's `data: ...` events: one id and creation time for all."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: ChunkDelta, finish: str | None = None, extras=None, out=None) -> bytes:
        body = ChatCompletionChunk(id=ident, created=created, model=model_id,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                                   emoverse=extras)
        event = f"data: {body.model_dump_json(exclude_none=True)}\n\n"
        if out is not None and include_usage:
            tail = ChatCompletionChunk(id=ident, created=created, model=model_id, choices=[],
                                       usage=usage(out))
            event += f"data: {tail.model_dump_json(exclude_none=True)}\n\n"
        return event.encode()

    return chunk

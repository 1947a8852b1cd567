"""`POST /v1/chat/completions`: OpenAI-style chat with a video content part.

The model is trained on one user turn (a video and a prompt) under a fixed system
prompt, so a request carries one user message with one `video_url` part and text. With
emoverse's `task` field (OpenAI clients: `extra_body`), the text is the transcript and
the prompt is the task's training prompt, as in `/v1/analyze`; without it the text is
the prompt verbatim, and the answer is parsed when the prompt carries a task tag.
Video URLs: `data:video/...;base64,...` (an upload) or a path under the media root
(`file://` optional). Remote URLs are not fetched. Decoding is greedy; sampling
parameters are accepted and ignored.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from pydantic import ValidationError

from emoverse.serving.errors import ServingError, invalid
from emoverse.serving.requests import Service, structured, task_of_prompt, timing, usage
from emoverse.serving.schemas import ChatRequest, ContentPart, TaskInput
from emoverse.serving.videos import VideoRef
from emoverse.tasks import get_task


def user_turn(req: ChatRequest) -> tuple[str, tuple[str, str]]:
    """(text, (field, url)) of the request's single user message."""
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
    return text, videos[0]


@contextmanager
def chat_video(service: Service, field: str, url: str) -> Iterator[VideoRef]:
    """The video of a `video_url` part: a base64 data URL or a path under the media root."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ServingError(422, field, "data URLs must be base64-encoded")
        if len(payload) * 3 // 4 > service.args.limits.max_upload_bytes:
            raise ServingError(413, field, f"video is over the "
                               f"{service.args.limits.max_upload_mb:g} MiB limit")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ServingError(422, field, f"malformed base64 data: {exc}") from exc
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


async def complete(service: Service, req: ChatRequest, header: str | None = None) -> dict:
    start = time.perf_counter()
    if req.stream:
        raise ServingError(400, "stream", "streaming is not supported; send stream=false")
    if req.n != 1:
        raise ServingError(400, "n", "only n=1 is supported (decoding is greedy)")
    model_id = service.model_id(req.model, header)
    text, (field, url) = user_turn(req)
    prompt, task = prompt_of(req, text)
    budget = service.budget(task, req.max_completion_tokens or req.max_tokens)
    with chat_video(service, field, url) as video:
        out = await service.run(model_id, prompt, video, budget, "messages")
    raw = out.generation.text
    parsed = get_task(task).parse(raw) if task else None
    finish = "length" if out.generation.completion_tokens >= budget else "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": raw},
                     "finish_reason": finish}],
        "usage": usage(out).model_dump(),
        "emoverse": {
            "task": task,
            "answer": structured(task, parsed).model_dump(exclude_none=True)
            if parsed and parsed.ok else None,
            "parse_error": parsed.error if parsed else None,
            "face_found": out.clip.face_found,
            "timing": timing(out, start).model_dump(),
        },
    }

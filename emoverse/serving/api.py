"""The HTTP API as a FastAPI app over a `Service` (no Ray: Serve mounts it as the ingress).

    GET  /healthz                 the gateway and the model deployment answer
    GET  /v1/models               served model ids (stages, adapters), OpenAI's list shape
    POST /v1/analyze              task + video (multipart upload or `video_path`) + inputs
    POST /v1/chat/completions     OpenAI-style chat with a `video_url` part

Bodies are parsed here, not by FastAPI's signature binding, so every refusal is a JSON
`{"error": {"field", "message", "status"}}` naming the input; an oversize body is cut off
while it streams in, before it is spooled to disk.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from emoverse.serving.chat import complete
from emoverse.serving.errors import ServingError, invalid
from emoverse.serving.requests import MODEL_HEADER, Service
from emoverse.serving.schemas import AnalyzeRequest, AnalyzeResponse, ChatRequest
from emoverse.serving.videos import VideoRef

logger = logging.getLogger(__name__)
FORM_FIELD_BYTES = 1 << 20  # a conversation as a form field; the video is a file part


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, by header or while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit():
            return await _send_error(send, ServingError(400, "content-length", "not a number"))
        if int(length) > self.max_bytes:
            return await _send_error(send, self._too_large())
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> ServingError:
        return ServingError(413, "body", f"request body is over {self.max_bytes} bytes "
                            "(limits.max_upload_mb)")


async def _send_error(send, error: ServingError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="emoverse", description="M2SE sentiment and emotion analysis")
    # base64 video in chat JSON is 4/3 of the file; form fields need a little more
    app.add_middleware(BodyLimit, max_bytes=service.args.limits.max_upload_bytes * 4 // 3
                       + FORM_FIELD_BYTES)
    app.add_exception_handler(ServingError, _refused)
    app.add_exception_handler(Exception, _failed)

    @app.get("/healthz")
    async def healthz() -> dict:
        return await service.health()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [m.model_dump() for m in service.models()]}

    @app.post("/v1/analyze", response_model=AnalyzeResponse)
    async def analyze(request: Request) -> AnalyzeResponse:
        header = request.headers.get(MODEL_HEADER)
        fields, upload = await _analyze_fields(request)
        req = _validated(AnalyzeRequest, fields)
        model_id = service.model_id(req.model, header)
        with _video(service, req, upload) as video:
            return await service.analyze(req, video, model_id)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        req = _validated(ChatRequest, await _json(request))
        return await complete(service, req, request.headers.get(MODEL_HEADER))

    return app


async def _refused(_: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _failed(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request", exc_info=exc)
    error = ServingError(500, "server", f"internal error ({type(exc).__name__})")
    return JSONResponse(error.body(), status_code=500)


async def _json(request: Request) -> dict:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ServingError(415, "content-type", f"{kind or 'none'!r}: send application/json")
    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError(400, "body", f"malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ServingError(400, "body", "a JSON object is expected")
    return body


async def _analyze_fields(request: Request) -> tuple[dict, UploadFile | None]:
    """The request's fields and its uploaded video (multipart), or its JSON object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        if kind != "application/json":
            raise ServingError(415, "content-type", f"{kind or 'none'!r}: send "
                               "application/json or multipart/form-data")
        return await _json(request), None
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=FORM_FIELD_BYTES)
    except ServingError:
        raise
    except Exception as exc:  # starlette's MultiPartException and parser errors
        raise ServingError(400, "body", f"malformed multipart form ({exc})") from None
    fields = {k: v for k, v in form.multi_items() if k != "video"}
    upload = form.get("video")
    if upload is not None and not isinstance(upload, UploadFile):
        raise ServingError(422, "video", "must be a file part (the video upload)")
    if "conversation" in fields:
        try:
            fields["conversation"] = json.loads(fields["conversation"])
        except json.JSONDecodeError as exc:
            raise ServingError(422, "conversation", f"malformed JSON ({exc})") from None
    return fields, upload


def _validated(model, fields: dict):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid(exc) from None


@contextmanager
def _video(service: Service, req: AnalyzeRequest, upload: UploadFile | None
           ) -> Iterator[VideoRef]:
    span = {"start": req.video_start, "end": req.video_end}
    if upload is not None and req.video_path:
        raise ServingError(422, "video_path", "give either an uploaded `video` or "
                           "`video_path`, not both")
    if upload is not None:
        with service.videos.uploaded(upload.file, upload.content_type, upload.filename,
                                     **span) as video:
            yield video
    elif req.video_path:
        yield service.videos.stored(req.video_path, **span)
    else:
        raise ServingError(422, "video", "required: upload the clip as multipart field "
                           "`video`, or give `video_path` under the media root")

"""The HTTP API as a FastAPI app over a `Service` (no Ray: Serve mounts it as the ingress).

    GET  /                        the web page (pick or upload a clip, see the answers)
    GET  /healthz                 the gateway and the model deployment answer
    GET  /openapi.json            every request body (JSON and multipart) and response
    GET  /v1/models               served model ids (stages, adapters), OpenAI's list shape
    GET  /v1/clips                clips under the media root (for the page to offer)
    POST /v1/analyze              task + video (multipart upload or `video_path`) + inputs
    POST /v1/chat/completions     OpenAI-style chat with a `video_url` part; `stream: true`

Bodies are parsed here, not by FastAPI's signature binding, so every refusal is a JSON
`{"error": {"field", "message", "status"}}` naming the input; an oversize body is cut off
while it streams in, before it is spooled to disk. `/v1/*` needs an API key when keys are
configured (`emoverse.serving.auth`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import contextmanager
from importlib import resources
from typing import Iterator

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from emoverse.serving import chat
from emoverse.serving.auth import OPEN_PATHS
from emoverse.serving.errors import ServingError, invalid
from emoverse.serving.openapi import describe
from emoverse.serving.requests import MODEL_HEADER, Service
from emoverse.serving.schemas import (AnalyzeRequest, AnalyzeResponse, ChatCompletion,
                                      ChatRequest, ClipList, Health, ModelList)
from emoverse.serving.videos import VideoRef
from emoverse.tasks import TASK_NAMES

logger = logging.getLogger(__name__)
FORM_FIELD_BYTES = 1 << 20  # a conversation as a form field; the video is a file part
MAX_JSON_DEPTH = 32  # deeper bodies are refused (100,000 levels once crashed the parser)


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


class Guard:
    """ASGI middleware: the API key on `/v1/*`, and each request's outcome measured.

    Routes say which task and model a request was for in `scope["emoverse"]`."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        labels = scope["emoverse"] = {}
        # the path within the app: Serve passes a route prefix as root_path
        path = scope["path"].removeprefix(scope.get("root_path", "").rstrip("/")) or "/"

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if path not in OPEN_PATHS:
                headers = dict(scope["headers"])
                try:
                    self.service.keys.check(headers.get(b"authorization", b"").decode("latin-1"))
                except ServingError as error:
                    return await _send_error(sent, error)
            await self.app(scope, receive, sent)
        finally:
            self.service.telemetry.request(
                path if path in ROUTES else "other", labels.get("task", "none"),
                labels.get("model", "none"), status, (time.perf_counter() - start) * 1000)


ROUTES = {"/", "/healthz", "/v1/models", "/v1/clips", "/v1/analyze", "/v1/chat/completions",
          "/openapi.json"}


async def _send_error(send, error: ServingError) -> None:
    body = json.dumps(error.body()).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="emoverse", version="1", summary="M2SE sentiment and emotion analysis",
                  description="Sentiment, emotion, facial actions, emotion reasons and "
                  "emotion-cause pairs from a video clip and what is said in it.")
    # base64 video in chat JSON is 4/3 of the file; form fields need a little more
    app.add_middleware(BodyLimit, max_bytes=service.args.limits.max_upload_bytes * 4 // 3
                       + FORM_FIELD_BYTES)
    app.add_middleware(Guard, service=service)  # outermost: 401s and 413s are counted too
    app.add_exception_handler(ServingError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid_query)
    app.add_exception_handler(Exception, _failed)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        if not service.args.page.enabled:
            raise ServingError(404, "path", "the page is off (page.enabled=false)")
        return HTMLResponse(PAGE)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return await service.health()

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=service.models())

    @app.get("/v1/clips", response_model=ClipList)
    async def clips(q: str = Query("", max_length=200, description="only paths containing "
                                   "this (case-insensitive)")) -> ClipList:
        listed, truncated = await asyncio.to_thread(service.videos.listed,
                                                    service.args.page.max_listed_clips, q)
        return ClipList(data=listed, truncated=truncated)

    @app.post("/v1/analyze", response_model=AnalyzeResponse)
    async def analyze(request: Request) -> AnalyzeResponse:
        header = request.headers.get(MODEL_HEADER)
        fields, upload = await _analyze_fields(request)
        if fields.get("stream") not in (None, False, "false"):
            raise ServingError(400, "stream", "/v1/analyze answers whole; stream from "
                               "/v1/chat/completions")
        req = _validated(AnalyzeRequest, fields)
        model_id = service.model_id(req.model, header)
        request.scope["emoverse"].update(task=req.task, model=model_id)
        with _video(service, req, upload) as video:
            return await service.analyze(req, video, model_id)

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def completions(request: Request):
        req = _validated(ChatRequest, await _json(request))
        header = request.headers.get(MODEL_HEADER)
        # labels only from known values: a client's strings must not grow the metrics
        task = (req.task or "none").lower()
        request.scope["emoverse"].update(
            task=task if task in TASK_NAMES or task == "none" else "other",
            model=(req.model or header or service.catalog.default)
            if (req.model or header or service.catalog.default) in service.catalog.entries
            else "unknown")
        if req.stream:
            events = await chat.stream(service, req, header)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        return await chat.complete(service, req, header)

    app.openapi = lambda: describe(app)
    return app


PAGE = resources.files("emoverse.serving").joinpath("page.html").read_text()


async def _refused(_: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _invalid_query(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation (query parameters) in our error shape."""
    return await _refused(_, invalid(exc, "query"))


async def _failed(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request", exc_info=exc)
    error = ServingError(500, "server", f"internal error ({type(exc).__name__})")
    return JSONResponse(error.body(), status_code=500)


async def _json(request: Request) -> dict:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ServingError(415, "content-type", f"{kind or 'none'!r}: send application/json")
    body = parse_json(await request.body(), "body")
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
        fields["conversation"] = parse_json(fields["conversation"], "conversation", status=422)
    return fields, upload


def parse_json(raw: bytes | str, field: str, status: int = 400):
    """`raw` parsed, nested at most MAX_JSON_DEPTH levels (deeper is a 400, not a crash)."""
    too_deep = ServingError(400, field, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(raw)
    except RecursionError:  # far deeper than the bound: the parser gave up first
        raise too_deep from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingError(status, field, f"malformed JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise too_deep
    return value


def _depth(value) -> int:
    """How deep a parsed JSON value nests (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((v, depth + 1) for v in
                             (item.values() if isinstance(item, dict) else item))
    return deepest


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

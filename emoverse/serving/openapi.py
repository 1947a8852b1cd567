"""`/openapi.json`: FastAPI's description plus what its signature binding cannot see.

The routes parse their bodies themselves (so every refusal names its field), so the
request bodies (JSON and multipart for `/v1/analyze`, JSON for chat), the streamed
chat's event stream, the error body of every refusal and the bearer key are added here
from the same pydantic models the routes validate with.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from emoverse.serving.schemas import (AnalyzeForm, AnalyzeRequest, ChatCompletionChunk,
                                      ChatRequest, ErrorBody)

REF = "#/components/schemas/{model}"
REFUSALS = {
    "/v1/analyze": {400: "malformed or too deeply nested body, streaming asked for",
                    401: "missing or invalid API key", 403: "video_path outside the media root",
                    404: "unknown model, or no video at video_path",
                    413: "upload, body or video over the limits",
                    415: "not JSON or multipart, or not a video",
                    422: "invalid field (the message names it)",
                    503: "overloaded or the model deployment is not ready"},
    "/v1/chat/completions": {400: "malformed or too deeply nested body, n > 1, remote URL",
                             401: "missing or invalid API key",
                             403: "video path outside the media root",
                             404: "unknown model, or no video at the path",
                             413: "video or body over the limits",
                             415: "not JSON, or not a video",
                             422: "invalid field (the message names it)",
                             503: "overloaded or the model deployment is not ready"},
    "/v1/models": {401: "missing or invalid API key"},
    "/v1/clips": {400: "no media root configured", 401: "missing or invalid API key",
                  422: "invalid query parameter"},
    "/healthz": {503: "the model deployment is not ready"},
}
HEADERS = {  # what a refusal carries besides its body
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying, when overloaded",
                          "schema": {"type": "integer"}}},
}


def describe(app: FastAPI) -> dict:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                       description=app.description, routes=app.routes)
    _, defs = models_json_schema(
        [(m, "validation") for m in (AnalyzeRequest, AnalyzeForm, ChatRequest, ErrorBody,
                                     ChatCompletionChunk)], ref_template=REF)
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs["$defs"])
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "an API key, when the server has keys configured (auth.*)"}}
    paths = spec["paths"]
    paths["/v1/analyze"]["post"]["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": _ref("AnalyzeRequest")},
        "multipart/form-data": {"schema": _ref("AnalyzeForm")}}}
    chat = paths["/v1/chat/completions"]["post"]
    chat["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": _ref("ChatRequest")}}}
    chat["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "with `stream: true`: `data: ` + a "
                   "ChatCompletionChunk per event, then `data: [DONE]`"}}
    for path, refusals in REFUSALS.items():
        for operation in paths[path].values():
            operation["responses"].update({str(status): {
                "description": why, "headers": HEADERS.get(status, {}),
                "content": {"application/json": {"schema": _ref("ErrorBody")}}}
                for status, why in refusals.items()})
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}, {}]  # {}: when no keys are set
    app.openapi_schema = spec
    return spec


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}

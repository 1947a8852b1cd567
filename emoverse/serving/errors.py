"""The one error type of the serving layer: an HTTP status and a message naming the input."""

from __future__ import annotations

from emoverse.config_file import error_message


class ServingError(Exception):
    """A request the server refuses; `field` names the input at fault."""

    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": str(self), "status": self.status}}


class Overloaded(ServingError):
    """Every model replica's queue is full: answer 503 instead of queueing without bound.
    `Retry-After` tells clients (the page, OpenAI's SDK) when to try again."""

    RETRY_AFTER_S = 1

    def __init__(self, detail: str = ""):
        super().__init__(503, "server", "overloaded, retry later" + (f" ({detail})" if detail else ""),
                         headers={"Retry-After": str(self.RETRY_AFTER_S)})


def invalid(exc, where: str = "body") -> ServingError:
    """A 422 from a pydantic ValidationError, naming the first field at fault."""
    errors = exc.errors()
    locs = [".".join(str(p) for p in e["loc"]) or where for e in errors]
    msgs = [_readable(e) for e in errors]
    parts = [m if loc == locs[0] else f"{loc}: {m}" for loc, m in zip(locs, msgs)]
    return ServingError(422, locs[0], "; ".join(parts))


def _readable(error: dict) -> str:
    return "required, but missing" if error["type"] == "missing" else error_message(error)

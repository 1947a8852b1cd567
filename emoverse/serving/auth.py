"""Optional bearer API keys, as OpenAI clients send them (`Authorization: Bearer KEY`).

Keys come from an environment variable (comma- or newline-separated) and/or a file (one
key per line, `#` comments), so a Kubernetes Secret can supply either; they are read by
each gateway replica, never written into the Serve config, and never logged. The file is
read again when it changes, so a rotated Secret takes effect without a redeploy. With no
keys configured the API is open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from emoverse.serving.errors import ServingError

# Paths that answer without a key: liveness probes, the page's own files, the API schema.
CHALLENGE = {"WWW-Authenticate": "Bearer"}  # what a 401 must carry (RFC 6750)
OPEN_PATHS = ("/healthz", "/", "/favicon.ico", "/openapi.json", "/docs",
              "/docs/oauth2-redirect", "/redoc")


class ApiKeys:
    def __init__(self, env_var: str | None = None, path: str | None = None,
                 environ: dict | None = None):
        self.env_var, self.path = env_var, Path(path) if path else None
        environ = os.environ if environ is None else environ
        self._env_keys = _split(environ.get(env_var, "")) if env_var else set()
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"auth.api_keys_file: no file at {self.path}")
        self._file_keys: set[str] = set()
        self._file_stamp: tuple | None = None
        self._digests = [_digest(k) for k in sorted(self._env_keys)]
        self._refresh()

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def describe(self) -> str:
        """Where the keys come from, for the log (counts and sources, never the keys)."""
        if not self.required:
            return "no API keys configured: the API is open to anyone who reaches it"
        sources = [f"${self.env_var}"] if self._env_keys else []
        sources += [str(self.path)] if self._file_keys else []
        return f"{len(self._digests)} API key(s) from {' and '.join(sources)}"

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless `authorization` is `Bearer <a configured key>`."""
        self._refresh()
        if not self._digests:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ServingError(401, "authorization", "missing API key: send "
                               "`Authorization: Bearer <key>`", CHALLENGE)
        digest = _digest(key.strip())
        # compare against every key so the time taken does not say which one nearly matched
        if not any([hmac.compare_digest(digest, d) for d in self._digests]):
            raise ServingError(401, "authorization", "invalid API key", CHALLENGE)

    def _refresh(self) -> None:
        if self.path is not None:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if stamp == self._file_stamp:
                    return
                self._file_keys = _split(self.path.read_text(), comments=True)
                self._file_stamp = stamp
            except OSError:
                return  # a Secret being swapped: keep the keys read last
            self._digests = [_digest(k) for k in sorted(self._env_keys | self._file_keys)]


def _split(text: str, comments: bool = False) -> set[str]:
    lines = text.replace(",", "\n").splitlines()
    if comments:
        lines = [line.split("#", 1)[0] for line in lines]
    return {line.strip() for line in lines if line.strip()}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()

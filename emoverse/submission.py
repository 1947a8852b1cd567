"""Ray Jobs job files (`jobs/*.yaml`): the typed spec, loading with errors that name the file
and the field, what a submission sends, and where the cluster's token comes from.

No Ray here: `emoverse/distributed/jobs.py` hands a `Submission` to Ray's Jobs API.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from emoverse.config_file import Strict, load_config

DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # where `ray start` writes it


class RuntimeEnvSpec(BaseModel):
    """The runtime_env fields we resolve; any other Ray runtime_env field (pip, uv,
    image_uri, ...) passes through to Ray, which validates it on submission."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # Uploaded and made the job's cwd; relative to the job file. Omit it (or submit with
    # --no-working-dir) to run the package installed in the cluster's image.
    working_dir: str | None = None
    excludes: list[str] = []
    env_vars: dict[str, str] = {}


class JobSpec(Strict):
    """One job file: what `ray job submit` takes, as a file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")  # the submission id's prefix
    description: str = ""
    entrypoint: str = Field(min_length=1)  # a shell command, run in the working dir
    runtime_env: RuntimeEnvSpec = RuntimeEnvSpec()
    metadata: dict[str, str] = {}
    # What the driver itself reserves; it runs on the head unless it asks for more.
    entrypoint_num_cpus: float | None = Field(None, ge=0)
    entrypoint_num_gpus: float | None = Field(None, ge=0)
    entrypoint_memory: int | None = Field(None, ge=0)
    entrypoint_resources: dict[str, float] = {}


@dataclass(frozen=True)
class Submission:
    """Everything one submission sends: `JobSubmissionClient.submit_job`'s arguments."""

    entrypoint: str
    submission_id: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    resources: dict[str, Any] = field(default_factory=dict)  # entrypoint_* arguments


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it was found, for messages


def load_job(path: str | Path) -> JobSpec:
    """A job file, validated; every problem names the file and the field."""
    return load_config(path, JobSpec, "job")


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def prepare_submission(spec: JobSpec, job_file: str | Path, *, args: list[str] = (),
                       env: dict[str, str] | None = None, upload: bool = True,
                       submission_id: str | None = None) -> Submission:
    """The submission of `spec` read from `job_file`: extra `args` appended to the
    entrypoint (later options and KEY=VALUE overrides win), `env` added to the job's
    environment, the working dir resolved against the job file's directory (or dropped
    when `upload` is False, to run the image's installed package)."""
    runtime_env = spec.runtime_env.model_dump(exclude_none=True)
    runtime_env["env_vars"] = {**spec.runtime_env.env_vars, **(env or {})}
    if not runtime_env["env_vars"]:
        del runtime_env["env_vars"]
    if not runtime_env.get("excludes"):
        runtime_env.pop("excludes", None)
    if upload and spec.runtime_env.working_dir:
        working_dir = (Path(job_file).resolve().parent / spec.runtime_env.working_dir).resolve()
        if not working_dir.is_dir():
            raise FileNotFoundError(f"{job_file}: field 'runtime_env.working_dir': "
                                    f"{working_dir} is not a directory")
        runtime_env["working_dir"] = str(working_dir)
    else:
        runtime_env.pop("working_dir", None)
        runtime_env.pop("excludes", None)
    entrypoint = " ".join([spec.entrypoint.strip(), *map(shlex.quote, args)])
    resources = {key: value for key, value in {
        "entrypoint_num_cpus": spec.entrypoint_num_cpus,
        "entrypoint_num_gpus": spec.entrypoint_num_gpus,
        "entrypoint_memory": spec.entrypoint_memory,
        "entrypoint_resources": spec.entrypoint_resources or None}.items() if value is not None}
    return Submission(
        entrypoint=entrypoint,
        submission_id=submission_id or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        runtime_env=runtime_env,
        metadata={"emoverse.job": spec.name, "emoverse.job_file": Path(job_file).name,
                  **spec.metadata},
        resources=resources)


def find_token(token_file: str | Path | None = None) -> Token | None:
    """The cluster's token, looked up as Ray's own clients do: `token_file` when given
    (it must exist), else $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH names, else
    ~/.ray/auth_token. None when there is none (a cluster without token auth)."""
    if token_file is not None:
        return _read_token(Path(token_file), f"--token-file {token_file}", required=True)
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = os.environ["RAY_AUTH_TOKEN_PATH"]
        return _read_token(Path(path), f"$RAY_AUTH_TOKEN_PATH ({path})", required=True)
    return _read_token(DEFAULT_TOKEN_FILE, str(DEFAULT_TOKEN_FILE), required=False)


def _read_token(path: Path, source: str, required: bool) -> Token | None:
    text = path.read_text().strip() if path.is_file() else ""
    if text:
        return Token(text, source)
    if required:
        raise FileNotFoundError(f"{source}: no token there (missing or empty file)")
    return None

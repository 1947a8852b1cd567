"""A recipe's paths are the caller's paths: made absolute before anything reaches Ray.

Ray Train workers and Ray Data actors run in directories of their own, so a relative
`base_model=runs/x/base-model` that the driver could read would make the workers ask the
model hub for a repository of that name, after the media stage had already run. Every path
setting is therefore resolved against the caller's working directory here, and a
`base_model` that is neither an existing directory nor a reachable hub id stops the run
before any work, naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path

from emoverse.recipe import Recipe, apply_overrides, tiny_arch


class BaseModelError(ValueError):
    """The recipe's base model is neither a directory nor a reachable hub repository."""


def absolute(value: str, cwd: Path | None = None) -> str:
    """`value` as an absolute path, a relative one taken from `cwd` (default: the caller's)."""
    path = Path(value).expanduser()
    cwd = Path(cwd or os.getcwd())
    return str(path if path.is_absolute() else (cwd / path).resolve())


def resolve_paths(recipe: Recipe, cwd: str | Path | None = None) -> Recipe:
    """`recipe` with every path setting absolute; a base model that cannot be found fails."""
    cwd = Path(cwd or os.getcwd())
    overrides = []
    if recipe.data.manifest:
        overrides.append(f"data.manifest={absolute(recipe.data.manifest, cwd)}")
    if recipe.media.yunet_model:
        overrides.append(f"media.yunet_model={absolute(recipe.media.yunet_model, cwd)}")
    if tiny_arch(recipe.base_model) is None:
        overrides.append(f"base_model={locate_base(recipe.base_model, cwd)}")
    return apply_overrides(recipe, overrides) if overrides else recipe


def locate_base(value: str, cwd: Path) -> str:
    """An existing directory as an absolute path, or a hub id that can be reached."""
    local = Path(absolute(value, cwd))
    if local.is_dir():
        return str(local)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looked = f"setting 'base_model' is {value!r}: no directory {local}"
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise BaseModelError(f"{looked}, and it is not a model hub id") from None
    if Path(value).parts[0] in (".", "..") or value.count("/") != 1:
        raise BaseModelError(f"{looked}, and it is not a model hub id (ORG/NAME)")
    _reach_hub(value, looked)
    return value


def _reach_hub(repo_id: str, looked: str) -> None:
    """The repository's config is in the local hub cache, or the hub answers for it."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if HF_HUB_OFFLINE:
        raise BaseModelError(f"{looked}, and hub id {repo_id!r} is not in the local hub cache "
                             "(HF_HUB_OFFLINE is set)")
    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as exc:  # network errors, 401/404: all mean the workers could not load it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BaseModelError(f"{looked}, and hub id {repo_id!r} cannot be reached: "
                             f"{reason}") from None

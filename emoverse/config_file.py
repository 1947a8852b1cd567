"""Configuration files: YAML validated by pydantic models, errors naming the file and field.

Recipes, sweep spaces, job files, local cluster specs and serving arguments are all read
here, so a problem reads the same whichever file it is in:
`FILE: field 'stages.0.lr': Input should be greater than 0`. `KEY=VALUE` overrides
(`stages.0.epochs=3`, `media.detector=yunet`) are applied to the loaded data before it is
validated, so an override is checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A configuration section: unknown fields are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the field."""


def error_message(error: dict) -> str:
    """One pydantic error's message, without pydantic's `Value error, ` prefix."""
    return error["msg"].removeprefix("Value error, ")


def field_errors(exc: ValidationError) -> str:
    """`field 'a.b': message` for each error of a validation (the model's own checks,
    which have no field, by their message alone)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"field '{where}': {error_message(error)}" if where else error_message(error))
    return "; ".join(parts)


def validated(model: type[M], data: Any, where: str) -> M:
    """`data` as `model`; a ConfigError naming `where` and every field at fault if not."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {field_errors(exc)}") from None


def read_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding a mapping; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {path}"
                                + (" (it is a directory)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{at}: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} fields, got "
                          f"{type(data).__name__}")
    return data


def load_config(path: str | Path, model: type[M], what: str,
                overrides: Sequence[str] = ()) -> M:
    """A YAML file validated as `model`, `KEY=VALUE` overrides applied first."""
    data = read_mapping(path, what)
    apply_key_values(data, overrides)
    return validated(model, data, str(path))


def find_config(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A YAML file, or the one shipped as `folder/NAME.yaml`; the error lists those shipped."""
    path = Path(name_or_path)
    if not path.is_file():
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {name_or_path!r} and no shipped {what} by "
                                f"that name (shipped: {', '.join(shipped(folder))})")
    return path


def shipped(folder: Path) -> list[str]:
    """The names of the YAML files shipped in `folder` (recipes, sweep spaces)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def apply_key_values(data: dict, overrides: Sequence[str]) -> None:
    """Apply `key=value` overrides (values parsed as YAML) to config data in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))


def _set_path(data: dict, dotted: str, value: Any) -> None:
    """Apply one `a.b.0.c=value` override; list indices and entry names both work."""
    keys = dotted.split(".")
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)] if key.isdigit() else next(
                (s for s in node if isinstance(s, dict) and s.get("name") == key), None)
            if node is None:
                raise KeyError(f"override {dotted!r}: no list entry named {key!r}")
        else:
            node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def override_sections(sections: dict[str, M], overrides: Sequence[str]) -> dict[str, M]:
    """Config sections (`{"media": MediaConfig(...), ...}`) with `SECTION.KEY=VALUE`
    overrides applied and validated again, as a recipe's would be."""
    data = {name: section.model_dump(mode="json") for name, section in sections.items()}
    apply_key_values(data, overrides)
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"overrides: unknown section(s) {', '.join(unknown)}; give "
                          f"{' or '.join(f'{name}.KEY=VALUE' for name in sections)}")
    return {name: validated(type(section), data[name], f"{name} overrides")
            for name, section in sections.items()}

"""Which model ids a run, stage checkpoint or model directory serves, and over which base.

A run serves each finished stage under its name. A stage saved as full weights is a base
of its own; a stage saved as a LoRA adapter is that adapter over its parent (for the tiny
recipe: stage 2 = stage 1's weights + stage 2's adapter), so both share one base model
per replica and a request picks one by model id. Configured adapters (e.g. per tenant)
sit on a served model id. Also resolved here: the media recipe clips must follow (the
run's, so served inputs are processed exactly as in training) and the token limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from emoverse.model.checkpoint import hears, is_checkpoint, parent_of
from emoverse.model.export import EXPORT_LINEAGE
from emoverse.recipe import MediaConfig, Recipe, load_recipe
from emoverse.rundir import RunDir, find_run
from emoverse.serving.config import AdapterSpec, ServeArgs


class ModelEntry(BaseModel):
    """One served model id: `base` (anything `load_model` loads) plus an optional adapter."""

    model_config = ConfigDict(frozen=True)

    id: str
    base: str
    adapter: str | None = None
    source: str  # what `load_model` would load to get the same weights merged
    hears: bool = False  # trained with the clip's audio: fed it too

    @property
    def kind(self) -> str:
        return "adapter" if self.adapter else "weights"


@dataclass(frozen=True)
class Catalog:
    entries: dict[str, ModelEntry]
    default: str
    media: MediaConfig
    max_input_tokens: int

    def entry(self, model_id: str) -> ModelEntry:
        if model_id not in self.entries:
            raise KeyError(f"unknown model {model_id!r}; served models: "
                           f"{', '.join(self.entries)}")
        return self.entries[model_id]


def stage_entry(checkpoint: Path, model_id: str) -> ModelEntry:
    checkpoint = checkpoint.resolve()
    if (checkpoint / "adapter").is_dir():
        return ModelEntry(id=model_id, base=parent_of(checkpoint),
                          adapter=str(checkpoint / "adapter"), source=str(checkpoint),
                          hears=hears(checkpoint))
    return ModelEntry(id=model_id, base=str(checkpoint), source=str(checkpoint),
                      hears=hears(checkpoint))


def _run_entries(run: RunDir, recipe: Recipe) -> list[ModelEntry]:
    finished = [s.name for s in recipe.stages if run.is_finished(s.name)]
    if not finished:
        raise FileNotFoundError(f"model: run {run.path} has no finished stage to serve")
    return [stage_entry(run.checkpoint(name), name) for name in finished]


def _model_entries(path: Path) -> tuple[list[ModelEntry], Recipe | None]:
    """The entries of `path` and the recipe of the run they come from (if any)."""
    if not path.exists():
        raise FileNotFoundError(f"model: no run, stage checkpoint or model directory at {path}")
    run = find_run(path)
    recipe = load_recipe(run.recipe_file) if run else None
    if run is not None and path.resolve() == run.path:
        return _run_entries(run, recipe), recipe
    if is_checkpoint(path):
        return [stage_entry(path, path.resolve().name)], recipe
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model: {path} is neither a run, a stage checkpoint nor a "
                                "Hugging Face model directory (no config.json)")
    entry = ModelEntry(id=path.resolve().name, base=str(path.resolve()),
                       source=str(path.resolve()), hears=hears(path))
    return [entry], recipe or _exported_recipe(path)


def _exported_recipe(path: Path) -> Recipe | None:
    """The recipe of the run an exported model came from, when that run is still there."""
    lineage = path / EXPORT_LINEAGE
    if not lineage.is_file():
        return None
    origin = json.loads(lineage.read_text()).get("exported_from")
    run = find_run(origin) if origin and Path(origin).exists() else None
    return load_recipe(run.recipe_file) if run else None


def adapter_entry(model_id: str, spec: AdapterSpec, served: dict[str, ModelEntry],
                  default: str) -> ModelEntry:
    path = Path(spec.path).resolve()
    if is_checkpoint(path) and (path / "adapter").is_dir():
        path = path / "adapter"
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapters.{model_id}.path: no peft adapter "
                                f"(adapter_config.json) in {spec.path}")
    base_id = spec.base or default
    if base_id not in served:
        raise ValueError(f"adapters.{model_id}.base: unknown model {base_id!r}; served: "
                         f"{', '.join(served)}")
    if model_id in served:
        raise ValueError(f"adapters.{model_id}: the id is already served by the model")
    # a tenant adapter hears as the model it was trained over
    return ModelEntry(id=model_id, base=served[base_id].source, adapter=str(path),
                      source=str(path), hears=served[base_id].hears)


def _token_limit(args: ServeArgs, recipe: Recipe | None, entry: ModelEntry) -> int:
    if args.limits.max_input_tokens:
        return args.limits.max_input_tokens
    if recipe is not None:
        return max(s.max_length for s in recipe.stages)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(entry.base if not is_checkpoint(entry.base)
                                        else str(Path(entry.base) / "model"),
                                        trust_remote_code=args.trust_remote_code)
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "max_position_embeddings", 2048))


def build_catalog(args: ServeArgs) -> Catalog:
    """Resolve `args.model` and the configured adapters into served model ids."""
    entries, recipe = _model_entries(Path(args.model))
    served = {e.id: e for e in entries}
    default = args.default_model or entries[-1].id
    for model_id, spec in args.adapters.items():
        served[model_id] = adapter_entry(model_id, spec, served, entries[-1].id)
    if default not in served:
        raise ValueError(f"default_model: unknown model {default!r}; served: "
                         f"{', '.join(served)}")
    media = args.media or (recipe.media if recipe else MediaConfig())
    hearing = [e.id for e in served.values() if e.hears]
    if hearing and media.audio is None:
        raise ValueError(f"model {hearing[0]!r} was trained to hear the clip's audio, but the "
                         "served media settings have no media.audio; serve it with its run's "
                         "recipe, or give media.audio")
    return Catalog(entries=served, default=default, media=media,
                   max_input_tokens=_token_limit(args, recipe, served[default]))

"""The run directory without Ray: recipe checks, finished stages, portable lineage, export
sources."""

import json

import pytest

from emoverse.model.checkpoint import LINEAGE, parent_of, read_lineage
from emoverse.recipe import load_recipe
from emoverse.rundir import RunDir, resolve_checkpoint


def fake_ray_checkpoint(path, parent):
    (path / "model").mkdir(parents=True)
    (path / "processor").mkdir()
    (path / "engine").mkdir()  # resumable state: not kept in checkpoints/<stage>
    (path / LINEAGE).write_text(json.dumps({"stage": path.name, "parent": parent, "step": 3}))
    return path


def test_a_run_directory_refuses_a_different_recipe(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start(load_recipe("m2se-tiny"))
    run.start(load_recipe("m2se-tiny"))  # the same recipe resumes
    with pytest.raises(ValueError, match="different recipe"):
        run.start(load_recipe("m2se-tiny", ["stages.0.lr=0.1"]))


def test_kept_stages_have_relative_parents_inside_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start(load_recipe("m2se-tiny"))
    base = run.path / "base-model"
    base.mkdir()
    first = run.keep_stage("s1", fake_ray_checkpoint(tmp_path / "ray" / "s1", str(base)),
                           str(base))
    second = run.keep_stage("s2", fake_ray_checkpoint(tmp_path / "ray" / "s2", str(first)),
                            str(first))
    assert read_lineage(first)["parent"] == "../../base-model"
    assert read_lineage(second)["parent"] == "../s1"
    assert not (second / "engine").exists() and run.is_finished("s2")
    moved = tmp_path / "moved"
    run.path.rename(moved)  # a run directory moves as a whole
    assert parent_of(moved / "checkpoints" / "s2") == str(moved / "checkpoints" / "s1")
    hub = run.keep_stage("s3", fake_ray_checkpoint(tmp_path / "ray" / "s3", "org/model"),
                         "org/model")
    assert read_lineage(hub)["parent"] == "org/model"  # a hub id stays as it is


def test_export_finds_the_last_finished_stage_or_says_what_is_missing(tmp_path):
    recipe = load_recipe("m2se-tiny")
    run = RunDir(tmp_path / "run")
    run.start(recipe)
    first, second = (s.name for s in recipe.stages)
    with pytest.raises(ValueError, match="has not finished"):
        resolve_checkpoint(run.path)
    run.keep_stage(first, fake_ray_checkpoint(tmp_path / "ray" / first, "x"), "x")
    assert resolve_checkpoint(run.path, first) == run.checkpoint(first)
    with pytest.raises(ValueError, match="has not finished"):
        resolve_checkpoint(run.path, second)
    with pytest.raises(ValueError, match="no stage 'nope'"):
        resolve_checkpoint(run.path, "nope")
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_checkpoint(tmp_path)

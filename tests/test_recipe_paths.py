"""Path settings are the caller's: resolved before Ray sees them, a missing base refused."""

import huggingface_hub.constants as hub_constants
import pytest

from emoverse.cli import main
from emoverse.recipe import apply_overrides, load_recipe
from emoverse.recipe_paths import BaseModelError, resolve_paths


def test_relative_paths_become_the_callers_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "runs" / "x" / "base-model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("m2se-tiny", ["base_model=runs/x/base-model",
                                       "data.manifest=emt/m.parquet",
                                       "media.detector=yunet", "media.yunet_model=~/y.onnx"])
    resolved = resolve_paths(recipe)
    assert resolved.base_model == str(tmp_path / "runs" / "x" / "base-model")
    assert resolved.data.manifest == str(tmp_path / "emt" / "m.parquet")
    assert resolved.media.yunet_model.endswith("/y.onnx") and "~" not in resolved.media.yunet_model
    assert resolve_paths(load_recipe("m2se-tiny")).base_model == "tiny"


@pytest.mark.parametrize("value", ["runs/x/base-model", "./base", "../base", "no such dir"])
def test_a_base_that_is_neither_a_directory_nor_a_hub_id_is_refused(value, tmp_path):
    recipe = apply_overrides(load_recipe("m2se-tiny"), [f"base_model={value}"])
    with pytest.raises(BaseModelError, match="setting 'base_model' is .*: no directory "
                       + str(tmp_path.parent) + ".*not a model hub id"):
        resolve_paths(recipe, tmp_path)


def test_a_hub_id_must_be_cached_when_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    recipe = apply_overrides(load_recipe("m2se-tiny"), ["base_model=SomeOrg/some-vlm"])
    with pytest.raises(BaseModelError, match="hub id 'SomeOrg/some-vlm' is not in the local hub "
                                             "cache"):
        resolve_paths(recipe, tmp_path)
    snapshot = tmp_path / "hub" / "models--SomeOrg--some-vlm" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--SomeOrg--some-vlm" / "refs").mkdir()
    (tmp_path / "hub" / "models--SomeOrg--some-vlm" / "refs" / "main").write_text("abc")
    assert resolve_paths(recipe, tmp_path).base_model == "SomeOrg/some-vlm"


def test_train_refuses_a_missing_relative_base_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "m2se-tiny", "base_model=runs/x/base-model", "--run-dir", "run"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"setting 'base_model' is 'runs/x/base-model': no directory {tmp_path}/runs/x" in err
    assert not (tmp_path / "run").exists()  # nothing written, nothing started

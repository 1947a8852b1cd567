"""The command line: help for every command, clear errors for bad input."""

import pytest

from emoverse.cli import build_parser, main

COMMANDS = [[], ["quickstart"], ["model"], ["model", "init-tiny"], ["emt"], ["emt", "demo"],
            ["emt", "build"], ["emt", "stats"], ["media"], ["media", "run"], ["media", "inspect"],
            ["bench"], ["bench", "media"], ["bench", "train"], ["train"], ["export"], ["eval"],
            ["eval", "run"], ["eval", "compare"], ["sweep"], ["recipes"], ["serve"],
            ["serve", "run"], ["serve", "build"]]


@pytest.mark.parametrize("words", COMMANDS)
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: emoverse" in out and len(out) > 200


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("quickstart", "train", "export", "model", "emt", "media", "bench", "recipes"):
        assert word in out


def test_recipes_lists_shipped(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "m2se-tiny" in out and "m2se-paper" in out


def test_model_init_tiny_writes_a_loadable_directory(tmp_path, capsys):
    assert main(["model", "init-tiny", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_bad_override_is_reported_without_a_traceback(tmp_path, capsys):
    code = main(["quickstart", "--out", str(tmp_path / "run"), "--size", "50",
                 "stages.0.mixture.0.weight=-2"])
    err = capsys.readouterr().err
    assert code == 2 and "emoverse: error:" in err and "weight" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("size", ["0", "-5", "ten"])
def test_bad_sizes_are_rejected(size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["emt", "demo", "--out", "x", "--size", size])
    assert exit_.value.code == 2
    assert "--size" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--stage", "nope"], "has no stage 'nope'"),
    (["--manifest", "missing.parquet"], "missing.parquet"),
    (["stages.0.epochs=zero"], "epochs"),
])
def test_train_rejects_bad_input_before_any_work(args, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "m2se-tiny", "--run-dir", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()  # nothing was started


def test_export_of_something_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "neither a stage checkpoint nor a run directory" in capsys.readouterr().err

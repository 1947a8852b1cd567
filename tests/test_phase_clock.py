"""The quickstart's closing output without Ray: the phase table and the next commands."""

import shlex

from emoverse.cli import build_parser
from emoverse.drivers.quickstart import next_steps
from emoverse.phase_clock import Countdown, PhaseClock, ProgressLog


class ListLog:
    """A logger's `info` that keeps the formatted lines."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, fmt, *args):
        self.lines.append(fmt % args)


def test_phases_follow_one_another_and_add_up_to_the_total(monkeypatch):
    ticks = iter([100.0, 112.5, 130.0, 131.0])
    monkeypatch.setattr("emoverse.phase_clock.time.perf_counter", lambda: next(ticks))
    clock = PhaseClock()
    clock.mark("demo clips")
    clock.mark("train stage1")
    clock.mark("evaluate stage1")
    assert clock.to_dict() == {"demo clips": 12.5, "train stage1": 17.5, "evaluate stage1": 1.0}
    assert clock.total == 31.0
    rows = [line.split() for line in clock.table().splitlines()]
    assert rows[2] == ["demo", "clips", "12.5", "40%"] and rows[-1] == ["total", "31.0", "100%"]


def test_countdown_estimates_from_the_rate_since_it_started(monkeypatch):
    ticks = iter([0.0, 10.0, 50.0])
    monkeypatch.setattr("emoverse.phase_clock.time.perf_counter", lambda: next(ticks))
    resumed = Countdown(done=500)  # a resumed stage: 500 steps took no time here
    assert resumed.left(500, 1500) == "? left"
    assert resumed.left(600, 1500) == "1m30s left"  # 10 s for 100 steps, 900 to go
    assert resumed.left(1500, 1500) == "0s left"


def test_countdown_waits_for_a_share_of_the_work_before_estimating(monkeypatch):
    ticks = iter([0.0, 10.0])
    monkeypatch.setattr("emoverse.phase_clock.time.perf_counter", lambda: next(ticks))
    clips = Countdown()
    assert clips.left(1, 4600) == "? left"  # one clip (and a pool's start) is no rate yet
    assert clips.left(91, 4600) == "? left"  # under 2%
    assert clips.left(460, 4600) == "1m30s left"  # 10 s for 460 clips, 4140 to go


def test_progress_log_speaks_at_most_every_interval_and_at_the_end(monkeypatch):
    now = iter([101.0, 102.0, 107.0, 107.5, 108.0])
    monkeypatch.setattr("emoverse.phase_clock.time.time", lambda: next(now))
    log = ListLog()
    progress = ProgressLog("media blocks", log, every=5.0)
    for done in (10, 20, 30, 40, 50):
        progress(done, 50)
    assert [line.split(",")[0] for line in log.lines] == [
        "  media blocks 10/50", "  media blocks 30/50", "  media blocks 50/50"]


def test_progress_log_says_nothing_while_the_count_stands_still(monkeypatch):
    now = iter([100.0, 110.0, 120.0, 130.0, 131.0])
    monkeypatch.setattr("emoverse.phase_clock.time.time", lambda: next(now))
    log = ListLog()
    progress = ProgressLog("media clips", log, every=5.0)
    for done in (0, 0, 0, 512, 512):  # a pipeline starting, then one file written
        progress(done, 4600)
    assert [line.split(",")[0] for line in log.lines] == [
        "  media clips 0/4600", "  media clips 512/4600"]


def test_next_steps_are_commands_the_cli_accepts(tmp_path):
    run = tmp_path / "my run"
    commands = [line.strip() for line in next_steps(run).splitlines()
                if line.strip().startswith("emoverse ")]
    assert len(commands) == 5
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.func)
    assert shlex.split(commands[0])[3] == str(run)  # quoted: the path has a space

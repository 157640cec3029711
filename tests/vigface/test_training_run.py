"""The bookkeeping the three training loops share (vigface/training/run.py)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from vigface.training.run import TrainingRun


def test_a_run_resumes_its_state_and_its_clock(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = TrainingRun(tmp_path, {"model": model, "optimizer": opt}, max_minutes=1.0)
    assert run.resume() is None  # nothing to resume yet
    run.elapsed = 42.0
    run.log({"step": 1, "loss": 0.5})
    run.checkpoint(step=7, rng=[1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.nn.init.zeros_(model.weight)

    again = TrainingRun(tmp_path, {"model": model, "optimizer": opt}, max_minutes=1.0)
    assert again.resume(enabled=False) is None and again.elapsed == 0.0
    extra = again.resume()
    assert extra == {"step": 7, "rng": [1, 2], "elapsed_s": 42.0}
    assert again.elapsed == 42.0 and torch.equal(model.weight, before["weight"])
    record = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])
    assert record == {"step": 1, "loss": 0.5, "elapsed_s": 42.0}

    with pytest.raises(ValueError, match="other identities"):

        def refuse(state):
            raise ValueError("trained on other identities")

        again.resume(check=refuse)


def test_the_budget_stops_a_run_only_past_it(tmp_path):
    run = TrainingRun(tmp_path, {}, max_minutes=0.5)
    run.elapsed = 29.0
    assert not run.out_of_time
    run.elapsed = 30.0
    assert run.out_of_time
    assert not TrainingRun(tmp_path, {}, max_minutes=None).out_of_time
    assert run.tick() >= 30.0


def test_only_the_main_process_writes(tmp_path):
    run = TrainingRun(tmp_path / "r", {"m": torch.nn.Linear(1, 1)}, is_main=False)
    run.log({"step": 1})
    run.checkpoint(step=1)
    assert not (tmp_path / "r").exists()
    assert run.provenance("fp32")["precision"] == "float32"


@pytest.mark.parametrize("key", ["step", "epoch"])
def test_a_resumed_run_drops_the_log_lines_its_checkpoint_does_not_hold(tmp_path, key):
    """A run killed between checkpoints logged steps it will train again: on resume the log
    keeps the lines up to the checkpoint (its step, or its epoch count for a per-epoch loop),
    so a log read later has every step once."""
    model = torch.nn.Linear(1, 1)
    run = TrainingRun(tmp_path, {"model": model})
    for i in range(1, 7):
        run.log({key: i, "loss": 1.0 / i})
    run.checkpoint(**{key: 4})
    run.log({"note": "a line without a step or epoch"})
    TrainingRun(tmp_path, {"model": model}).resume()
    kept = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r.get(key) for r in kept] == [1, 2, 3, 4, None]
    # the checkpoint at the last logged line keeps everything
    run.checkpoint(**{key: 9})
    TrainingRun(tmp_path, {"model": model}).resume()
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_leg_after_its_step_and_a_second_acts_as_before(tmp_path, signum):
    before = signal.getsignal(signum)
    run = TrainingRun(tmp_path, {}, max_minutes=None)
    with run.stop_on_signals():
        assert not run.out_of_time
        os.kill(os.getpid(), signum)  # handled in this (main) thread before the next line
        assert run.out_of_time and run.stop_signal == signal.Signals(signum).name
        assert signal.getsignal(signum) is before  # a second signal: what it did before
    assert signal.getsignal(signum) is before
    quiet = TrainingRun(tmp_path, {}, max_minutes=None)
    with quiet.stop_on_signals():
        pass
    assert not quiet.out_of_time and signal.getsignal(signum) is before

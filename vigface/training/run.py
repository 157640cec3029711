"""What every training loop shares: resuming, the JSONL log, the wall-clock budget and the
provenance its artifact's card records.

A run lives in ``out_dir``: ``checkpoints/last.pt`` (written atomically, so a crash never
leaves half a checkpoint) and ``train_log.jsonl`` (one JSON object per line, appended across
resumes; lines a killed run wrote after its last checkpoint are dropped on resume, as those
steps are trained again). Inside :meth:`TrainingRun.stop_on_signals` SIGINT and SIGTERM end a
leg the way its time budget does: at the end of the step, with a checkpoint and the artifact.
The loops (stage 2, the upsampler, the autoencoder) keep their own steps; this class keeps
the bookkeeping around them the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from pathlib import Path

import torch

from vigface.precision import autocast_dtype, dtype_name
from vigface.training.checkpoint import save_checkpoint

log = logging.getLogger(__name__)


class TrainingRun:
    """``stateful``: name -> object with ``state_dict``/``load_state_dict`` (model, EMA,
    optimiser, LR schedule) saved in every checkpoint and restored on resume. Only the main
    process (``is_main``) writes; every process reads a checkpoint. With ``shard_rank`` (a
    model part of which each rank holds its own slice) every rank writes and reads its own
    checkpoint: ``last.pt`` for rank 0, ``last.rank<r>.pt`` for the others."""

    def __init__(
        self,
        out_dir: str | Path,
        stateful: dict,
        max_minutes: float | None = None,
        is_main: bool = True,
        device: torch.device | str = "cpu",
        shard_rank: int | None = None,
    ):
        self.out_dir = Path(out_dir)
        name = "last.pt" if not shard_rank else f"last.rank{shard_rank}.pt"
        self.checkpoint_path = self.out_dir / "checkpoints" / name
        self.writes_checkpoint = is_main or shard_rank is not None
        self.log_path = self.out_dir / "train_log.jsonl"
        self.stateful, self.max_minutes, self.is_main = stateful, max_minutes, is_main
        self.device = torch.device(device)
        self.elapsed = 0.0
        self.stop_signal: str | None = None
        self._t_last = time.time()
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def resume(self, enabled: bool = True, check=None) -> dict | None:
        """Restore every stateful object from the last checkpoint; returns the checkpoint's
        own entries (step, epoch, rng, ...) or None when there is none (or ``enabled`` is
        False). ``check(state)`` may refuse a checkpoint (raise) before anything loads."""
        if not (enabled and self.checkpoint_path.is_file()):
            return None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if check is not None:
            check(state)
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        self.elapsed = state.get("elapsed_s", 0.0)
        if self.is_main:
            self._drop_log_after(state.get("step"), state.get("epoch"))
            log.info("resumed from %s", self.checkpoint_path)
        return {k: v for k, v in state.items() if k not in self.stateful}

    def _drop_log_after(self, step: int | None, epoch: int | None) -> None:
        """Keep the log lines the checkpoint holds: those up to its step (or, for a loop that
        checkpoints per epoch, its epoch count), so a resumed run does not log steps twice."""
        key, last = ("step", step) if step is not None else ("epoch", epoch)
        if last is None or not self.log_path.is_file():
            return
        lines = self.log_path.read_text().splitlines()
        kept = [x for x in lines if not x.strip() or json.loads(x).get(key, 0) <= last]
        if len(kept) != len(lines):
            from vigface.atomic import atomic_write_text

            atomic_write_text(self.log_path, "".join(x + "\n" for x in kept))
            log.info("dropped %d log lines past %s %d", len(lines) - len(kept), key, last)

    def tick(self) -> float:
        """Add the wall time since the last tick to ``elapsed`` (checkpointed, so a resumed
        run's budget counts what earlier sessions spent); returns it in seconds."""
        now = time.time()
        self.elapsed, self._t_last = self.elapsed + now - self._t_last, now
        return self.elapsed

    @property
    def out_of_time(self) -> bool:
        """The loop should stop after this step: its budget is spent or a signal asked."""
        spent = self.max_minutes is not None and self.elapsed >= self.max_minutes * 60
        return spent or self.stop_signal is not None

    @contextlib.contextmanager
    def stop_on_signals(self, signals=(signal.SIGINT, signal.SIGTERM)):
        """While the loop runs, SIGINT or SIGTERM (Ctrl-C, ``docker stop``, a scheduler's
        preemption) make :attr:`out_of_time` true, so the step in flight finishes and the loop
        checkpoints and writes its artifact instead of losing the steps since the last
        checkpoint. The first signal puts the old handlers back: a second one acts as it
        would have (Ctrl-C twice stops at once). Off the main thread, where Python cannot
        install handlers, it does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in signals}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        def ask_to_stop(signum, _frame) -> None:
            self.stop_signal = signal.Signals(signum).name
            log.warning("%s: stopping after this step with a checkpoint (again: at once)",
                        self.stop_signal)  # fmt: skip
            restore()

        for s in signals:
            signal.signal(s, ask_to_stop)
        try:
            yield self
        finally:
            restore()

    def log(self, record: dict) -> None:
        if self.is_main:
            with self.log_path.open("a") as f:
                f.write(json.dumps({**record, "elapsed_s": round(self.elapsed, 1)}) + "\n")

    def checkpoint(self, **extra) -> None:
        """Every stateful object plus ``extra`` (step, epoch, rng, ...) and the elapsed time."""
        if self.writes_checkpoint:
            state = {name: obj.state_dict() for name, obj in self.stateful.items()}
            save_checkpoint(self.checkpoint_path, {**state, **extra, "elapsed_s": self.elapsed})

    def provenance(self, precision: str) -> dict:
        """What every artifact's card says about how it was trained."""
        return {
            "train_minutes": round(self.elapsed / 60, 1),
            "device": str(self.device),
            "precision": dtype_name(autocast_dtype(precision, self.device)),
        }

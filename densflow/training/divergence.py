"""Non-finite losses and parameters: when a run stops, and where it goes on from.

A step whose loss or gradient is non-finite is skipped (see
:class:`~densflow.training.step.TrainStep`) and changes nothing; after ``max_nonfinite`` of them
in a row, :class:`TrainingDivergedError` stops the run and names the last checkpoint, which is left
as it was. An update that makes a parameter non-finite stops the run the same way at once (there
is no earlier state in memory to go back to, and resuming would repeat it): the last checkpoint is
the last good state, and ``init_from`` starts a new run from its weights with other optimizer
settings. No checkpoint holds a non-finite tensor: the trainer checks the parameters before each
save, and :func:`~densflow.training.state.refuse_nonfinite` refuses them too. A checkpoint still
being written when the run stops is waited for (``settle``) before the message names the last good
one.

Finite weights are not enough for a checkpoint to be *good*: an update of ``lr=1e30`` leaves
finite weights whose loss is NaN. A checkpoint is good once the loss of the step after it, the
first computed with its model, was finite. No checkpoint is written while the last loss was
non-finite (the model is the one that produced it), so that the good one before stays in place;
and where the last checkpoint turns out bad, the message says that no good one is left.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from torch import Tensor

from .metrics import RunLog

__all__ = ["DivergenceGuard", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """Too many consecutive non-finite losses, or an update that made a parameter non-finite;
    the message names the step, the last good checkpoint and how to start again from it."""


class DivergenceGuard:
    """Counts the non-finite losses in a row and remembers the last checkpoint, so that a run that
    diverges stops with the way on from its last good state.

    Arguments:
        max_nonfinite: consecutive non-finite losses that stop the run.
        settle: called before the last checkpoint is named: waits for a checkpoint being
            written (which then updates ``last_checkpoint``) and returns ``None``, or a clause
            saying it could not be written
            (:meth:`~densflow.training.checkpoint_writer.CheckpointWriter.settle`).

    Attributes:
        max_nonfinite: consecutive non-finite losses that stop the run.
        nonfinite_run: the non-finite losses in a row so far (a checkpoint keeps it, so a resumed
            run goes on counting).
        last_checkpoint: ``(path, step)`` of the last checkpoint written (its file in place) or
            resumed from.
    """

    def __init__(self, max_nonfinite: int, settle: Callable[[], str | None] | None = None) -> None:
        self.max_nonfinite = max_nonfinite
        self.settle = settle if settle is not None else lambda: None
        self.nonfinite_run = 0
        self.last_checkpoint: tuple[Path, int] | None = None
        # The step of the last checkpoint saved or resumed from, until the next step's loss says
        # whether its model is good; then step -> good, for the last few checkpoints (a write may
        # fail, and the one before is named).
        self._awaiting: int | None = None
        self._verdicts: dict[int, bool] = {}

    def worth_saving(self, step: int) -> bool:
        """Whether the model after ``step`` steps may be saved: not while the last loss was
        non-finite (skipped steps leave the model that produced it). Saved, it awaits the loss of
        the next step."""
        if self.nonfinite_run:
            return False
        self._awaiting = step
        return True

    def resumed(self, path: Path, step: int) -> None:
        """The run resumed from the checkpoint ``path`` of ``step``."""
        self.last_checkpoint = (path, step)
        self._awaiting = None
        if self.nonfinite_run:  # its model gave the last, non-finite, loss
            self._judge(step, False)
        else:
            self._awaiting = step

    def _judge(self, step: int, good: bool) -> None:
        self._verdicts[step], self._awaiting = good, None
        for old in sorted(self._verdicts)[:-4]:
            del self._verdicts[old]

    def step_done(self, loss: Tensor | None, step: int, epoch: int, log: RunLog) -> None:
        """Count step ``step`` (1-based: steps done) with its ``loss`` (``None``: non-finite,
        skipped); stop after ``max_nonfinite`` skipped steps in a row."""
        if self._awaiting is not None and step == self._awaiting + 1:
            self._judge(self._awaiting, loss is not None)
        if loss is not None:
            self.nonfinite_run = 0
            return
        self.nonfinite_run += 1
        log.event("nonfinite", step=step, epoch=epoch, run=self.nonfinite_run)
        if self.nonfinite_run >= self.max_nonfinite:
            first = step - self.nonfinite_run + 1
            log.event("diverged", step=step, epoch=epoch)
            raise TrainingDivergedError(
                f"training diverged at step {step}: {self.nonfinite_run} non-finite losses "
                f"in a row (steps {first}..{step}, each skipped without an update); "
                f"{self.restart_advice()}"
            )

    def parameters_diverged(self, step: int, epoch: int, log: RunLog) -> NoReturn:
        """Stop: the update of ``step`` (1-based) made a parameter non-finite."""
        if self._awaiting is not None:  # that update came from a finite loss of its model
            self._judge(self._awaiting, True)
        log.event("diverged", step=step, epoch=epoch)
        raise TrainingDivergedError(
            f"training diverged at step {step}: its update made parameters non-finite (from a "
            f"finite loss and gradient); {self.restart_advice()}"
        )

    def restart_advice(self) -> str:
        """Where the last good state is and how to go on from it: resuming would repeat the same
        steps, so a new run from its weights with other optimizer settings."""
        failed = self.settle()
        failed = f"{failed}; " if failed else ""
        if self.last_checkpoint is None:
            return (
                f"{failed}no checkpoint had been written yet. Start again with a lower --lr, a "
                "--grad-clip or --amp none"
            )
        path, step = self.last_checkpoint
        if self._verdicts.get(step) is False:
            return (
                f"{failed}the last checkpoint, {path} (step {step}), is no good one: the loss of "
                f"its model was already non-finite (step {step + 1}), and no earlier one is left. "
                "Start again in a new --out-dir with a lower --lr, a --grad-clip or --amp none"
            )
        return (
            f"{failed}the last good checkpoint is {path} (step {step}), left as it was. Start a "
            f"new run from its weights with a lower --lr, a --grad-clip or --amp none: the same "
            f"command with --init-from {path} --out-dir NEW_DIR"
        )

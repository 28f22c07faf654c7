r"""The training loop: data order, steps, evaluations, checkpoints and exact resume.

The loop only calls ``step(x, noise, lr)`` (:mod:`densflow.training.step`, chosen once at
start-up); what each step sees comes from :mod:`densflow.training.batches` (its batch and noise,
the next one prepared while the step runs on the device) and :mod:`densflow.training.schedule`
(its learning rate and seeds).

**Exact resume.** Every random draw of a step comes from generators re-seeded from
``(seed, step, rank)``: the data order of an epoch is a permutation seeded by ``(seed, epoch)``,
augmentation and model noise are seeded by the step. A checkpoint (every ``checkpoint_every``
steps and at each epoch end: copied to the host, then written atomically in the background while
training goes on, :mod:`densflow.training.checkpoint_writer`) therefore only needs the model, the
optimizer, the position ``(epoch, step in epoch)`` and a few running sums; resuming skips the
batches of the current epoch that are already done. On CPU, ``N`` steps + resume + ``N`` steps
give bit-identical parameters to ``2N`` steps (tests/training/test_trainer.py). On GPU some
kernels are not deterministic, so a resumed run agrees only to rounding.

**Non-finite losses** skip their step; too many in a row, or a non-finite parameter, stop the run
with :class:`~densflow.training.divergence.TrainingDivergedError`, naming the last good checkpoint
(:mod:`densflow.training.divergence`). Resuming checks the checkpoint against the config
(:mod:`densflow.training.resume`).

**The run folder** (:mod:`densflow.training.rundir`) is locked for the run's whole life (from the
constructor to the end of :meth:`Trainer.fit`, which first waits for the checkpoint being
written, also when the run stops on an error), so a second run writing to it is refused at once;
the temporaries a killed save left there are removed when the lock is taken.

**Multi-GPU.** Under ``torchrun`` (``WORLD_SIZE > 1``) each rank takes its shard of the epoch's
permutation (:func:`~densflow.training.schedule.shard_indices`) and the step wraps the model in
DistributedDataParallel; only rank 0 writes checkpoints, metrics and progress. ActNorm's
data-dependent initialisation runs on each rank's first batch *before* the wrapping, and the
wrapper then broadcasts rank 0's parameters and buffers, so all ranks start identical. Logged
train bits/dim are rank 0's share of the batch. Evaluations are sharded over the ranks, which
first take rank 0's buffers (BatchNorm's statistics; DDP's next forward pass broadcasts them too).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import data
from ..evaluation import evaluate
from ..glow import ActNorm
from ..io.resolve import locate
from ..model import DenseFlow
from ..performance import autocast, compose_coupling_nets
from ..utils.distributed import Dist, broadcast_buffers
from ..utils.errors import InputError
from ..utils.runtime import collate_images
from .batches import StepInputs
from .checkpoint_writer import CheckpointWriter
from .config import CHECKPOINT_NAME, TrainConfig
from .divergence import DivergenceGuard
from .loggers import make_loggers, sample_source
from .metrics import RunLog, RunningMean, read_metrics
from .optim import build_optimizer, optimizer_state_dict
from .result import TrainResult
from .resume import check_ranks_agree, load_init_weights, load_resumed, read_resumable
from .rundir import RunFolderLock, TrainingSetupError
from .schedule import Stream, derive_seed, learning_rate
from .state import TrainingState, restore_rng, training_checkpoint
from .step import BatchNormStats, TrainStep, make_step

__all__ = ["Trainer", "train"]


class Trainer:
    """One training run of :class:`TrainConfig`; :meth:`fit` trains (resuming when a checkpoint
    exists) and returns a :class:`TrainResult`.

    Arguments:
        config: the run.
        train_set, test_set: datasets of uint8 ``(3, S, S)`` images (or tuples whose first item is
            one) to use instead of ``load_dataset(config.dataset, ...)``.

    Attributes:
        model: the :class:`DenseFlow` being trained (without any DDP wrapper).
        optimizer: its optimizer.
        train_step: the step implementation (built by :meth:`fit`).
        step, epoch, step_in_epoch: the position of the next step.
    """

    def __init__(
        self, config: TrainConfig, *, train_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ) -> None:  # fmt: skip
        self.config = cfg = config
        self.dist = Dist.from_env()
        self.is_main = self.dist.rank == 0
        try:
            self.device = self.dist.device(cfg.device)  # under torchrun: one GPU per process
        except ValueError as err:
            raise TrainingSetupError(str(err)) from err
        self.out_dir = Path(cfg.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        # Only rank 0 writes to the run folder, so only rank 0 takes its lock.
        init = locate(cfg.init_from).files if cfg.init_from is not None else ()
        self._lock = RunFolderLock(self.out_dir, inputs=init, trees=[cfg.data_dir])
        self._stale_temporaries = self._lock.acquire() if self.is_main else []
        try:
            self._set_up(train_set, test_set)
        except BaseException:
            self._lock.release()
            raise

    def _set_up(self, train_set: Dataset | None, test_set: Dataset | None) -> None:
        cfg = self.config
        if train_set is None:
            train_set = self._load("train")
        self.train_set, self._test_set = train_set, test_set

        shape = tuple(collate_images([train_set[0]]).shape[1:])
        with torch.random.fork_rng(devices=[]):  # the init must not depend on (or move) global RNG
            torch.manual_seed(derive_seed(cfg.seed, Stream.INIT))
            self.model = DenseFlow(cfg.architecture(shape[-1]))
        if shape != self.model.image_shape:
            raise InputError(
                f"the train images are {shape} but the model expects "
                f"{self.model.image_shape}; set image_size or model_config to match"
            )
        # Same parameters and numbers, fewer convolution calls per step (docs/performance.md).
        compose_coupling_nets(self.model)
        memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format).train()
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr)
        self.inputs = StepInputs(
            train_set, cfg, self.model, self.device, self.dist.rank, self.dist.world_size
        )
        order_len = len(train_set) // self.dist.world_size
        self.steps_per_epoch = order_len // cfg.batch_size
        if cfg.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch == 0:
            per = " per process" if self.dist.world_size > 1 else ""
            raise TrainingSetupError(
                f"batch_size {cfg.batch_size} is larger than the {order_len} training images"
                f"{per} of {cfg.dataset}; set --batch-size (batch_size) to at most {order_len}"
            )

        self.step = self.epoch = self.step_in_epoch = 0
        # A checkpoint counts once its file is in place: then it is logged and becomes the
        # guard's last good one (which waits for a write in flight before naming it).
        self._checkpoints = CheckpointWriter(on_written=self._written, staging=self._lock.staging)
        self._guard = DivergenceGuard(cfg.max_nonfinite, settle=self._checkpoints.settle)
        self._epoch_mean = RunningMean(self.device)
        self._metrics_bytes = self._maybe_resume()
        if self._guard.last_checkpoint is None and cfg.init_from is not None:
            load_init_weights(self.model, cfg.init_from, self.device)
        self.train_step: TrainStep | None = None

    # ------------------------------------------------------------------ set-up
    def _load(self, split: str) -> Dataset:
        cfg = self.config
        return data.load_dataset(cfg.dataset, cfg.data_dir, split, celeba_crop=cfg.celeba_crop)

    @property
    def test_set(self) -> Dataset:
        if self._test_set is None:
            self._test_set = self._load("test")
        return self._test_set

    def _maybe_resume(self) -> int:
        """Load ``out_dir/checkpoint.pt`` if there is one; return the metrics bytes to keep."""
        ckpt = read_resumable(self.checkpoint_path, self.config, self.device)
        if ckpt is None:
            return 0
        load_resumed(self.model, self.optimizer, ckpt, self.checkpoint_path)
        s = ckpt.state
        self.step, self.epoch, self.step_in_epoch = s.step, s.epoch, s.step_in_epoch
        self._guard.nonfinite_run, self._epoch_mean.count = s.nonfinite_run, s.epoch_count
        self._epoch_mean.sum.copy_(s.epoch_sum)
        if s.world_size != self.dist.world_size and self.step_in_epoch:
            warnings.warn(
                "resuming mid-epoch with another number of processes: the rest of this "
                "epoch does not follow the original data order",
                stacklevel=2,
            )
        restore_rng(ckpt.rng)
        self._guard.resumed(self.checkpoint_path, self.step)
        return s.metrics_bytes

    def _build_step(self) -> TrainStep:
        """ActNorm's data-dependent init on the first batch when the run starts, as the first
        training forward would do it (same inputs, same noise; running statistics untouched),
        then the step of the config's speed switches."""
        initialized = all(
            m.is_initialized() for m in self.model.modules() if isinstance(m, ActNorm)
        )
        if self.step == 0 and not initialized:
            x = self.inputs.prepare(next(self.inputs.batches(0, 0, 1)), self.step)
            stats = BatchNormStats(self.model)
            with torch.no_grad(), autocast(self.device, self.config.amp):
                self.model(x, self.inputs.noise_generator(self.step))
            stats.restore()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        return make_step(
            self.model, self.optimizer, self.config.speed, max_norm=max_norm, dist=self.dist
        )

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train until all epochs are done or ``max_steps`` is reached."""
        if self.is_main:
            self._lock.acquire()  # released below: fit() may be called again
        try:
            return self._fit()
        except BaseException as err:
            self._checkpoints.wait_while_failing(err)
            raise
        finally:
            self._lock.release()

    def _fit(self) -> TrainResult:
        cfg, start_time = self.config, time.time()
        total_epochs = cfg.epochs + cfg.finetune_epochs
        n_steps = self.steps_per_epoch
        plan = n_steps * total_epochs
        if cfg.max_steps is not None:
            plan = min(plan, cfg.max_steps)
        # Live mirrors of metrics.jsonl (rank 0), closed with the log; evaluations show samples.
        samples = sample_source(self.model, derive_seed(cfg.seed, Stream.EVAL))
        loggers = make_loggers(cfg.logger, self.out_dir, samples) if self.is_main else []
        self.log = RunLog(
            self.out_dir, self._metrics_bytes, enabled=self.is_main, total_steps=plan,
            done_steps=self.step, images_per_step=cfg.batch_size * self.dist.world_size,
            progress=cfg.progress, device=self.device, loggers=loggers,
        )  # fmt: skip
        self.log.event(
            "start", step=self.step, epoch=self.epoch, resumed=self.step > 0,
            world_size=self.dist.world_size, config=cfg.to_dict(),
        )  # fmt: skip
        if self._stale_temporaries:
            stale = self._stale_temporaries
            self.log.info("removed %d temporary file(s) of an interrupted save: %s",
                          len(stale), ", ".join(stale))  # fmt: skip
            self._stale_temporaries = []
        self.log.info(
            "%s at step %d of %d (%d epochs of %d steps) in %s on %s",
            "resuming" if self.step else "training", self.step, plan, total_epochs, n_steps,
            self.out_dir, self.device,
        )  # fmt: skip
        self.train_step = self._build_step()
        if self.dist.world_size > 1:  # the same step and settings on every rank, or none starts
            check_ranks_agree(self.step, cfg, self.checkpoint_path)
        try:
            while self.epoch < total_epochs and (
                cfg.max_steps is None or self.step < cfg.max_steps
            ):
                stop = n_steps
                if cfg.max_steps is not None:
                    stop = min(n_steps, self.step_in_epoch + cfg.max_steps - self.step)
                self.log.begin_epoch(self.epoch, total_epochs)
                inputs = self.inputs.prefetch(self.epoch, self.step_in_epoch, stop, self.step)
                for x, noise in inputs:
                    lr = learning_rate(cfg, self.step, self.epoch)
                    metrics = self.train_step(x, noise, lr, overlap=inputs.fetch_next)
                    self.log.grad_norm(None if metrics.loss is None else metrics.grad_norm)
                    if not metrics.params_finite:
                        self._guard.parameters_diverged(self.step, self.epoch, self.log)
                    self.step += 1
                    self.step_in_epoch += 1
                    self._account(metrics.loss)
                    if self.step % cfg.log_every == 0:
                        self.log.train(self.step, self.epoch, lr)
                    every = cfg.checkpoint_every
                    if every and self.step % every == 0 and self.step_in_epoch < n_steps:
                        self._save()
                if self.step_in_epoch == n_steps:
                    self._end_epoch(total_epochs)
                elif self._checkpoints.submitted != (self.checkpoint_path, self.step):
                    self._save()  # stopped by max_steps mid-epoch
            completed = self.epoch >= total_epochs
            if completed and cfg.iw_samples:
                self._evaluate(iw=True)
            self._checkpoints.wait()  # the run ends with its last checkpoint in place
            elapsed = time.time() - start_time
            self.log.event(
                "end", step=self.step, epoch=self.epoch, completed=completed, elapsed_s=elapsed
            )
            self.log.info("%s at step %d after %.0f s", "done" if completed else "stopped",
                          self.step, elapsed)  # fmt: skip
        finally:
            self.log.close()
        self.model.eval()
        # The latest values of the whole run (also those logged before a resume), from the log.
        last = {
            k: v
            for e in read_metrics(self.out_dir)
            for k, v in e.items()
            if k in ("bpd", "test_bpd", "test_bpd_iw") and v is not None
        }
        return TrainResult(
            self.model, self.out_dir, self.checkpoint_path, self.step, self.epoch, completed,
            last.get("bpd"), last.get("test_bpd"), last.get("test_bpd_iw"),
            time.time() - start_time,
        )  # fmt: skip

    def _account(self, loss: Tensor | None) -> None:
        """Sums for the log and the epoch; non-finite steps counted and checked. Called after
        step number ``self.step`` (1-based: steps done) finished."""
        self.log.step_done(loss)
        if loss is not None:
            self._epoch_mean.add(loss)
        self._guard.step_done(loss, self.step, self.epoch, self.log)

    def _check_parameters(self) -> None:
        """Before an evaluation or a save: stop if the last update made a parameter
        non-finite."""
        if self.train_step is not None and not self.train_step.parameters_finite():
            self._guard.parameters_diverged(self.step, self.epoch, self.log)

    def _end_epoch(self, total_epochs: int) -> None:
        """Epoch-end log line, evaluation when due, then a checkpoint at the next epoch's start."""
        cfg = self.config
        self._check_parameters()
        self.log.event(
            "epoch", step=self.step, epoch=self.epoch, train_bpd=self._epoch_mean.mean(),
            lr=learning_rate(cfg, self.step - 1, self.epoch), steps=self.steps_per_epoch,
            phase="main" if self.epoch < cfg.epochs else "finetune",
        )  # fmt: skip
        last = self.epoch + 1 == total_epochs
        # Every rank evaluates its shard of the test set; the result is the same on every rank.
        if cfg.eval_every and ((self.epoch + 1) % cfg.eval_every == 0 or last):
            start = time.perf_counter()
            self._evaluate(iw=False)
            self.log.exclude(time.perf_counter() - start)  # images/s counts training only
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_mean.reset()
        self._save()

    def _evaluate(self, iw: bool) -> None:
        cfg = self.config
        if self.dist.world_size > 1:  # each rank's BatchNorm statistics saw its own shard
            broadcast_buffers(self.model)
        result = evaluate(
            self.model, self.test_set, device=self.device, dist=self.dist,
            batch_size=cfg.eval_batch_size or cfg.batch_size, limit=cfg.eval_limit,
            iw_samples=cfg.iw_samples if iw else None, chunk_size=cfg.chunk_size,
            seed=derive_seed(cfg.seed, Stream.EVAL), progress=False, single=not iw,
            num_workers=cfg.num_workers,
            cuda_graphs=cfg.cuda_graphs and self.device.type == "cuda",  # make_step warns on a CPU
        )  # fmt: skip
        if iw:
            values = {"test_bpd_iw": result.bpd_iw, "iw_samples": cfg.iw_samples}
        else:
            values = {"test_bpd": result.bpd_single}
        self.log.evaluation(self.step, self.epoch, result.n_images, **values)

    def _save(self) -> None:
        """Hand the checkpoint to the writer (rank 0): the loop waits for its copy to the host
        only; a crash while it is written leaves the previous one intact."""
        self._check_parameters()  # on every rank: all stop together
        if not self._guard.worth_saving(self.step) or not self.is_main:
            return  # while the last loss was non-finite, the last good checkpoint stays
        state = TrainingState(
            step=self.step, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
            nonfinite_run=self._guard.nonfinite_run, epoch_sum=self._epoch_mean.sum,
            epoch_count=self._epoch_mean.count, metrics_bytes=self.log.offset(),
            world_size=self.dist.world_size,
        )  # fmt: skip
        checkpoint = training_checkpoint(
            self.model, train_config=self.config.to_dict(),
            optimizer=optimizer_state_dict(self.optimizer),  # loads into eager and compiled
            state=state,
        )  # fmt: skip
        self._checkpoints.save(self.checkpoint_path, self.step, checkpoint)

    def _written(self, path: Path, step: int) -> None:
        """A checkpoint's file is in place (called in the writer's thread)."""
        self._guard.last_checkpoint = (path, step)
        self.log.checkpoint(path, step)


def train(
    config: TrainConfig, *, train_set: Dataset | None = None, test_set: Dataset | None = None
) -> TrainResult:
    """Train (or resume) the run described by ``config``; see :class:`Trainer`.

    Example (a few steps of the tiny model on the built-in photos)::

        from densflow.training import train, train_preset
        result = train(train_preset("photos", "smoke", out_dir="runs/try"))
        print(result.test_bpd)
    """
    return Trainer(config, train_set=train_set, test_set=test_set).fit()

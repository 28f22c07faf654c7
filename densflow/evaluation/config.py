"""The settings of an evaluation and of a sample grid: :class:`EvalConfig`, the one home of their
defaults.

Everything else reads them from here: :func:`~densflow.evaluation.evaluate` and
:func:`~densflow.evaluation.save_sample_grid` (which take an ``EvalConfig`` and field overrides),
the ``eval`` and ``sample`` command-line options (generated from the fields, their types and
``help``), :func:`~densflow.reproduce.reproduce`, and the evaluation fields of
:class:`~densflow.training.TrainConfig` (:func:`eval_default`). The dataset's paper ``k`` is read
from the data registry (:func:`paper_iw_samples`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data import dataset_info
from ..performance import AMP_MODES, Speed
from ..utils.errors import InputError
from ..utils.ranges import check_range
from ..utils.validate import field_default, field_kind
from .draws import BLOCK

__all__ = ["EVAL", "SAMPLE", "EvalConfig", "eval_default", "paper_iw_samples"]

EVAL, SAMPLE = "eval", "sample"
"""The commands a field belongs to (``EvalConfig.fields_of``)."""


def _field(default: Any, help: str, commands: tuple[str, ...], **meta: Any) -> Any:
    """A field with its ``help``, the commands whose options it is, and its ``choices``; the
    range of a number is in :data:`densflow.utils.ranges.RANGES`, which both the dataclass and
    the command line check."""
    return field(default=default, metadata={"help": help, "commands": commands, **meta})


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate bits/dim on a dataset and how to draw a sample grid.

    The numbers depend on the model, the images and ``seed`` alone: image ``i``'s draws (and
    sample ``i``'s) are a function of ``(seed, i)`` (:mod:`densflow.evaluation.draws`), so
    ``batch_size``, ``chunk_size``, ``num_workers``, the number of processes and an interruption
    change only the speed (and the rounding, where a pass runs in other shapes).
    """

    batch_size: int = _field(
        64, "images per forward pass; the importance-weighted bound runs batch_size x chunk_size",
        (EVAL,),
    )  # fmt: skip
    iw_samples: int | str | None = _field(
        None, "k of the importance-weighted bound, or 'paper' for the paper's k of the dataset "
        "(1000 for CIFAR-10, 200 otherwise); none: the single-sample bound only",
        (EVAL,), metavar="K|paper",
    )  # fmt: skip
    chunk_size: int = _field(
        BLOCK, "importance samples per forward pass (the paper's code: 50; a chunk of 50 is one "
        "block of draws)", (EVAL,),
    )  # fmt: skip
    single: bool = _field(
        True, "the single-sample bound too (one pass per batch; off: the importance-weighted "
        "bound only)", (EVAL,),
    )  # fmt: skip
    limit: int | None = _field(
        None, "only the first N images of the split (none: all)", (EVAL,),
    )  # fmt: skip
    seed: int = _field(
        0, "seed of every draw: image i's (and sample i's) depend on the seed and i alone",
        (EVAL, SAMPLE),
    )  # fmt: skip
    n_samples: int = _field(
        64, "number of samples in the grid (--n for short, but not under torchrun, whose own "
        "options it abbreviates)", (SAMPLE,), aliases=("--n",),
    )  # fmt: skip
    nrow: int = _field(8, "images per grid row", (SAMPLE,))
    temperature: float = _field(
        1.0, "scale of the prior's standard deviation, finite and >= 0", (SAMPLE,),
    )  # fmt: skip
    num_workers: int = _field(0, "DataLoader workers", (EVAL,))
    save_interval_s: float = _field(
        60.0, "seconds between writes of the progress file (0: after every batch)", (EVAL,),
    )  # fmt: skip
    progress: bool | None = _field(
        None, "progress bar (none: on a terminal and in notebooks; log lines otherwise)", (EVAL,)
    )
    amp: str = _field(
        "none", "bf16: the coupling networks in bfloat16, log-dets and bits/dim in float32 "
        "(within 0.01 bits/dim); the paper's numbers are float32", (EVAL, SAMPLE),
        choices=AMP_MODES, speed=True,
    )  # fmt: skip
    channels_last: bool = _field(
        False, "NHWC memory format for the convolutions", (EVAL, SAMPLE), speed=True
    )
    compile: bool = _field(
        False, "torch.compile the flow: minutes of compilation, then faster passes; worth it "
        "for importance-weighted runs of a whole test set", (EVAL, SAMPLE), speed=True,
    )  # fmt: skip
    cuda_graphs: bool = _field(
        False, "replay the passes from CUDA graphs, one per shape, for importance-weighted runs "
        "on a GPU, where the eager pass is bound by the host issuing its operators; not with "
        "compile; eager, with a warning, on a CPU", (EVAL, SAMPLE), speed=True,
    )  # fmt: skip

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            kind, optional = field_kind(EvalConfig, f.name)
            if (value is None and optional) or (f.name == "iw_samples" and value == "paper"):
                continue
            if f.name == "iw_samples" and isinstance(value, str):
                raise InputError(
                    f"iw_samples must be a number of samples or 'paper', got {value!r}"
                )
            if "choices" in meta:
                if value not in meta["choices"]:
                    raise InputError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
            elif kind is bool:
                if not isinstance(value, bool):
                    raise InputError(f"{f.name} must be True or False, got {value!r}")
            else:
                check_range("EvalConfig", f.name, value, option=_flag(f))
        self.speed  # noqa: B018 (validates the switches together)

    @property
    def speed(self) -> Speed:
        """The speed switches, as the evaluation pass is chosen from them."""
        return Speed(self.amp, self.channels_last, self.compile, self.cuda_graphs)

    @classmethod
    def fields_of(cls, command: str) -> list[dataclasses.Field]:
        """The fields that are options of ``command`` (:data:`EVAL` or :data:`SAMPLE`)."""
        return [f for f in dataclasses.fields(cls) if command in f.metadata["commands"]]

    def replace(self, **changes: Any) -> EvalConfig:
        """A copy with some fields changed (validated again); an unknown name is refused."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(
                f"unknown evaluation settings {unknown}; the fields of EvalConfig are "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def for_dataset(self, dataset: str) -> EvalConfig:
        """This config with ``iw_samples="paper"`` replaced by the paper's k of ``dataset``."""
        if self.iw_samples != "paper":
            return self
        k = paper_iw_samples(dataset)
        if k is None:
            raise InputError(
                f"the paper reports no importance-weighted bound for {dataset}; give a number "
                "of samples (--iw-samples K)"
            )
        return self.replace(iw_samples=k)


def _flag(f: dataclasses.Field) -> str:
    return [*f.metadata.get("flags", ["--" + f.name.replace("_", "-")])][0]


def eval_default(name: str) -> Any:
    """The default of :class:`EvalConfig`'s field ``name`` (for configs that hold one of them,
    as :class:`~densflow.training.TrainConfig` does)."""
    return field_default(EvalConfig, name)


def paper_iw_samples(dataset: str) -> int | None:
    """The ``k`` of the paper's reported test bits/dim on ``dataset`` (from the data registry:
    1000 for CIFAR-10, 200 for the others), or None for a dataset outside the paper.

    Example:
        >>> paper_iw_samples("cifar10"), paper_iw_samples("photos")
        (1000, None)
    """
    paper = dataset_info(dataset).paper
    return None if paper is None else paper.iw_samples

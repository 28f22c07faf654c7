r"""Test-set bits/dim and sample grids, with numbers that depend only on the seed.

The paper reports the importance-weighted bound with :math:`k = 1000` samples on CIFAR-10 and
200 on the other datasets (:func:`paper_iw_samples`): for the paper's model, hours of passes.
This package evaluates it resumably, on one process or sharded over the processes of a
``torchrun`` job (one machine or several), with the same numbers either way:

* :mod:`~densflow.evaluation.config` — :class:`EvalConfig`, every setting and its default, from
  which the ``eval`` and ``sample`` options are generated;
* :mod:`~densflow.evaluation.draws` — image :math:`i`'s draws are a function of
  :math:`(\text{seed}, i)` alone (a generator per image, seeded from both), so its bits/dim do
  not depend on the batch size, the chunk size, the number of processes or an interruption;
* :mod:`~densflow.evaluation.passes` — the pass, eager (a compiled model's compiled one) or
  replayed from CUDA graphs, chosen once per evaluation;
* :mod:`~densflow.evaluation.run` — :func:`evaluate`: both bounds of every image, in batches,
  the importance-weighted one by :func:`densflow.bounds.importance_weighted_log_prob`;
* :mod:`~densflow.evaluation.partial` — progress files, one per process, that the same command
  resumes from;
* :mod:`~densflow.evaluation.distributed` — the shards, the gathering of the per-image values in
  dataset order, and the group's one progress line;
* :mod:`~densflow.evaluation.sampling` — :func:`draw_samples` and :func:`save_sample_grid`,
  sample :math:`i` drawn from :math:`(\text{seed}, i)`;
* :mod:`~densflow.evaluation.result` — :class:`EvalResult`, and :class:`NonFiniteError` for
  results that are not numbers.

docs/evaluation.md shows the design, the commands (``torchrun … -m densflow eval``, several
machines, Slurm) and what was measured.
"""

from .config import EvalConfig, eval_default, paper_iw_samples
from .distributed import GroupStopped
from .result import EvalResult, NonFiniteError
from .run import evaluate
from .sampling import draw_samples, save_sample_grid

__all__ = [
    "EvalConfig",
    "EvalResult",
    "GroupStopped",
    "NonFiniteError",
    "draw_samples",
    "eval_default",
    "evaluate",
    "paper_iw_samples",
    "save_sample_grid",
]

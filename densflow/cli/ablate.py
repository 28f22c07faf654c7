"""``python -m densflow ablate``: the ablation study of :mod:`densflow.ablations` from a shell.

Runs every (variant, seed) of a preset (resumably, in ``--out-dir``), the cost sweep, writes
``results.json`` there and prints the table and the verdict on each of the paper's claims.
"""

from __future__ import annotations

import argparse

from .options import option_range

__all__ = ["add_ablate"]


def add_ablate(sub: argparse._SubParsersAction) -> None:
    from ..ablations import ABLATION_PRESETS
    from ..data import DATASETS

    p = sub.add_parser(
        "ablate",
        help="train and compare DenseFlow's ablation variants at matched parameter count",
        description="The paper's claims in miniature: a plain flow, one-shot input augmentation, "
        "DenseFlow, dense-only and attention-only coupling networks and a growth-rate sweep, "
        "each at matched parameters, over several seeds; resumable per variant and seed.",
    )
    p.add_argument("--dataset", default="photos", choices=list(DATASETS), help="dataset name")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    p.add_argument(
        "--preset",
        default="cpu",
        choices=sorted(ABLATION_PRESETS),
        help="scale: smoke (tests), quickstart (minutes), cpu (about 25 min), paper (a GPU)",
    )
    p.add_argument("--out-dir", default="outputs/ablations", help="folder of the runs")
    p.add_argument("--variants", nargs="+", default=None, help="variants (default: all)")
    p.add_argument(
        "--seeds", nargs="+", type=option_range("--seeds", "ablations", "seeds"), default=None,
        help="seeds (default: preset)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=option_range("--steps", "ablations", "steps"), default=None,
        help="training steps (default: preset)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=option_range("--batch-size", "ablations", "batch_size"),
        default=None, help="images per step",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument(
        "--timing-steps",
        type=option_range("--timing-steps", "ablations", "timing_steps"),
        default=2,
        help="timed steps per point of the cost sweep (0: no timing)",
    )
    p.set_defaults(run=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from .. import ablations

    results = ablations.run(
        args.dataset,
        preset=args.preset,
        out_dir=args.out_dir,
        data_dir=args.data_dir,
        variants=args.variants,
        seeds=args.seeds,
        steps=args.steps,
        batch_size=args.batch_size,
        device=args.device,
        timing_steps=args.timing_steps,
    )
    print(ablations.table(results))
    for v in ablations.verdicts(results):
        print(f"{v['claim']}: {v['verdict']} (gap {v['gap']:+.3f} bits/dim, seed spread "
              f"{v['spread']:.3f}); paired by seed: {v['paired_verdict']} (spread of the "
              f"per-seed gaps {v['paired_spread']:.3f})")  # fmt: skip
    print(f"results: {args.out_dir}/results.json")
    return 0

"""The ``eval`` and ``sample`` sub-commands: a model (anything :func:`densflow.io.load` takes)
evaluated on a dataset split or sampled into a PNG grid."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..utils.errors import InputError
from .options import add_cache_dir, add_deprecated, add_seed, option_float, option_int

__all__ = ["Interrupted", "add_eval", "add_sample", "option_int"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line that says what was kept."""


def _iw_samples(text: str) -> int | str:
    return text if text == "paper" else option_int("--iw-samples")(text)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        metavar="MODEL",
        help="the model: a checkpoint (.pt) or run folder, a model directory, an official run "
        "folder (args.pickle + check/checkpoint.pt), a cached name (cifar10, imagenet32, "
        "imagenet64, celeba) or a Hugging Face Hub repo id",
    )
    add_deprecated(parser, "--official", "MODEL", "official", metavar="RUN_DIR")
    add_cache_dir(parser, "that holds the cached names")
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (cuda if available), 'cpu', 'cuda', ... (default: auto)",
    )


def _locate(args: argparse.Namespace) -> Any:
    """Where the model named on the command line is (:func:`densflow.io.locate`)."""
    from ..io.resolve import locate

    if (args.checkpoint is None) == (args.official is None):
        raise InputError("give the model once: MODEL (a path, a cached name or a Hub repo id)")
    args.checkpoint = args.checkpoint or args.official
    return locate(args.checkpoint, cache_dir=args.cache_dir)


def add_eval(sub: argparse._SubParsersAction) -> None:
    from ..data import CELEBA_CROPS, DATASETS

    ev = sub.add_parser(
        "eval", help="test-set bits/dim of a checkpoint",
        description="Bits/dim on a dataset split: the single-sample bound and, with --iw-samples, "
        "the importance-weighted bound the paper reports (k=1000 for CIFAR-10 in chunks of 50, "
        "k=200 otherwise: --iw-samples paper). Prints JSON; --out also writes it to a file.",
    )  # fmt: skip
    _add_model_source(ev)
    ev.add_argument(
        "--dataset",
        default=None,
        choices=list(DATASETS),
        help="dataset name (default: the one the checkpoint was trained on, from its "
        "train config or the official args.pickle)",
    )
    ev.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    ev.add_argument(
        "--split",
        default="test",
        choices=["train", "valid", "test"],
        help="split to evaluate; valid exists for CelebA only (default: test)",
    )
    ev.add_argument(
        "--celeba-crop",
        default="official",
        choices=CELEBA_CROPS,
        help="CelebA crop: official resizes the whole image, center148 crops first "
        "(default: official)",
    )
    ev.add_argument(
        "--limit",
        type=option_int("--limit"),
        default=None,
        help="only the first N images of the split",
    )
    ev.add_argument(
        "--batch-size",
        type=option_int("--batch-size"),
        default=64,
        help="images per forward pass; the "
        "importance-weighted bound runs batch-size x chunk-size (default: 64)",
    )
    ev.add_argument(
        "--iw-samples",
        type=_iw_samples,
        default=None,
        help="k of the importance-weighted bound, or "
        "'paper' for the paper's k of the dataset (default: single-sample only)",
    )
    ev.add_argument(
        "--chunk-size",
        type=option_int("--chunk-size"),
        default=50,
        help="importance samples per forward pass (default: 50)",
    )
    add_seed(ev, "the noise draws")
    ev.add_argument(
        "--partial",
        default=None,
        help="progress file: an interrupted evaluation "
        "resumes from it; only a progress file of this program is ever replaced or deleted "
        "(default: OUT.partial when --out is given)",
    )
    ev.add_argument("--out", default=None, help="also write the JSON results to this file")
    ev.add_argument(
        "--num-workers",
        type=option_int("--num-workers", 0),
        default=0,
        help="DataLoader workers (default: 0)",
    )
    ev.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only on a terminal)",
    )
    _add_speed_switches(
        ev,
        amp_help="bf16: the coupling networks in bfloat16, log-dets and "
        "bits/dim in float32; the paper's numbers are float32 (default: none)",
        compile_help="worth it for importance-weighted runs of the whole test set",
        graphs_help="for importance-weighted runs on a GPU, where the eager pass is bound by "
        "the host issuing its operators; the last, smaller batch runs eagerly",
    )
    ev.set_defaults(run=_eval, parser=ev)


def _add_speed_switches(
    parser: argparse.ArgumentParser, amp_help: str, compile_help: str, graphs_help: str
) -> None:
    from ..performance import AMP_MODES

    speed = parser.add_argument_group(
        "speed",
        "switches of densflow.performance (docs/performance.md): --channels-last, --compile and "
        "--cuda-graphs change results by rounding only (1e-5 relative), --amp bf16 a little more",
    )
    switch: dict[str, Any] = dict(action=argparse.BooleanOptionalAction, default=False)
    speed.add_argument("--amp", default="none", choices=AMP_MODES, help=amp_help)
    speed.add_argument("--channels-last", **switch, help="NHWC memory format for the convolutions")
    speed.add_argument(
        "--compile",
        **switch,
        help="torch.compile the flow: minutes of compilation, then faster passes; " + compile_help,
    )
    speed.add_argument(
        "--cuda-graphs",
        **switch,
        help="replay the passes from CUDA graphs, captured once per shape (not with --compile; "
        "eager, with a warning, on a CPU): " + graphs_help,
    )


def _load_for_speed(args: argparse.Namespace, source: Any) -> tuple[Any, str | None]:
    """The model of ``source`` on ``--device``, prepared for ``--channels-last`` and
    ``--compile``, and the dataset it was trained on (when recorded)."""
    from ..performance import prepare_model
    from ..utils.runtime import resolve_device

    if args.compile and args.cuda_graphs:
        raise InputError(
            "choose one of --compile and --cuda-graphs: a capture of the compiled flow has not "
            "been validated"
        )
    device = resolve_device(args.device, option="--device")
    model, trained_on = source.load(device)
    return prepare_model(model, args.channels_last, args.compile), trained_on


def _eval(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluate import PAPER_IW_SAMPLES, evaluate
    from ..io.files import atomic_write_text
    from ..io.outputs import check_output
    from ..utils.runtime import collate_images, first_images

    # Every output is checked against every input before any work, so that hours of evaluation
    # are never lost and no input is overwritten.
    source = _locate(args)
    trees = [args.data_dir]
    out = check_output("--out", args.out, source.files, trees=trees) if args.out else None
    partial = args.partial or (f"{args.out}.partial" if args.out else None)
    if partial is not None:
        partial = check_output(
            "--partial", partial, [*source.files, out], trees=trees, regular=True
        )

    model, trained_on = _load_for_speed(args, source)
    dataset = args.dataset or trained_on
    if dataset is None:
        args.parser.error("--dataset is needed: the checkpoint does not record its dataset")
    k = args.iw_samples
    if k == "paper":
        if dataset not in PAPER_IW_SAMPLES:
            args.parser.error(f"the paper reports no importance-weighted bound for {dataset}")
        k = PAPER_IW_SAMPLES[dataset]
    images = load_dataset(dataset, args.data_dir, args.split, celeba_crop=args.celeba_crop)
    images = first_images(images, args.limit)
    if len(images) == 0:
        raise InputError(f"{dataset} {args.split} has no images; check the dataset (data check)")
    shape = tuple(collate_images([images[0]]).shape[1:])
    if shape != tuple(model.image_shape):
        raise InputError(
            f"the model is for {model.image_shape} images, {dataset} {args.split} has {shape}; "
            "evaluate it on the dataset it was trained on (--dataset), or give a model of that "
            "image size"
        )
    try:
        result = evaluate(
            model,
            images,
            batch_size=args.batch_size,
            iw_samples=k,
            chunk_size=args.chunk_size,
            seed=args.seed,
            progress=args.progress,
            partial_path=partial,
            num_workers=args.num_workers,
            amp=args.amp,
            cuda_graphs=args.cuda_graphs,
        )
    except KeyboardInterrupt:
        kept = partial is not None and partial.is_file()
        raise Interrupted(
            f"interrupted; the partial file {partial} lets the same command resume"
            if kept
            else "interrupted; nothing was kept (give --out or --partial to make an evaluation "
            "resumable)"
        ) from None
    summary = {
        "dataset": dataset,
        "split": args.split,
        "model": args.checkpoint,
        **result.to_dict(),
    }
    text = json.dumps(summary, indent=2, allow_nan=False)  # JSON has no NaN: to_dict gives null
    print(text)
    if out is not None:
        atomic_write_text(out, text + "\n")
    if not result.finite:
        raise InputError(
            'the bits/dim are not finite (NaN or inf, written as null with "non_finite": '
            "true); the model's weights or outputs are not finite: evaluate an earlier "
            "checkpoint of the run"
        )
    return 0


def add_sample(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "sample",
        help="write a PNG grid of samples",
        description="Draw samples from a checkpoint and save them as a PNG grid.",
    )
    _add_model_source(sp)
    sp.add_argument("--out", required=True, help="the PNG file to write")
    sp.add_argument(
        "--n", type=option_int("--n"), default=64, help="number of samples (default: 64)"
    )
    sp.add_argument(
        "--nrow", type=option_int("--nrow"), default=8, help="images per grid row (default: 8)"
    )
    sp.add_argument(
        "--temperature",
        type=option_float("--temperature", minimum=0.0),
        default=1.0,
        help="scale of the prior's standard deviation, finite and >= 0 (default: 1.0)",
    )
    add_seed(sp, "the draws")
    _add_speed_switches(
        sp,
        amp_help="bf16: the coupling networks in bfloat16; the same draws, "
        "so pixels differ slightly from the float32 samples (default: none)",
        compile_help="worth it only for a large --n",
        graphs_help="one grid is one pass, so the capture (warm-up passes and the recording) "
        "costs more than the replay saves",
    )
    sp.set_defaults(run=_sample)


def _sample(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate import save_sample_grid
    from ..io.outputs import check_output

    source = _locate(args)
    out = check_output("--out", args.out, source.files)
    model, _ = _load_for_speed(args, source)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(args.seed)
    try:
        save_sample_grid(
            model,
            out,
            n=args.n,
            temperature=args.temperature,
            generator=generator,
            nrow=args.nrow,
            amp=args.amp,
            cuda_graphs=args.cuda_graphs,
        )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {out} was not written") from None
    print(f"wrote {args.n} samples to {args.out}")
    return 0

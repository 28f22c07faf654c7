r"""Test-set bits per dimension, resumable, and sample grids.

Two bounds on :math:`-\log_2 P(x) / D` (lower is better), averaged over the images:

* the single-sample bound, the training objective: one dequantization and cross-unit noise draw;
* the importance-weighted bound with :math:`k` samples (:meth:`DenseFlow.iw_log_prob`), which the
  paper reports: :math:`k = 1000` for CIFAR-10 (in chunks of 50) and 200 for the other datasets
  (:data:`PAPER_IW_SAMPLES`). It is tighter: its bits/dim are lower on average.

An importance-weighted evaluation of a paper-size model runs for hours, so :func:`evaluate` can
save its progress (the per-image values so far and the generator state) to ``partial_path`` and
pick up from there; the final numbers equal those of an uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from .bounds import bits_per_dim
from .data import paper_datasets
from .io.checkpoint import nonfinite_entries
from .io.files import atomic_save, atomic_write
from .model import DenseFlow
from .performance import GraphedFlow, autocast, run_eagerly
from .utils.errors import InputError
from .utils.runtime import collate_images, progress_bar, resolve_device
from .utils.validate import check_float, check_int

__all__ = ["EvalResult", "PAPER_IW_SAMPLES", "draw_samples", "evaluate", "save_sample_grid"]

PAPER_IW_SAMPLES = {name: d.paper.iw_samples for name, d in paper_datasets().items()}
"""Importance samples k of the paper's reported test bits/dim, per dataset."""

_PARTIAL_FORMAT, _PARTIAL_VERSION = "densflow-eval-partial", 1


@dataclass(frozen=True)
class EvalResult:
    """Test-set bits/dim.

    Attributes:
        bpd_single: mean single-sample bits/dim (None when not computed).
        bpd_iw: mean importance-weighted bits/dim (None without ``iw_samples``).
        n_images: images evaluated.
        iw_samples: k of the importance-weighted bound.
        per_image_single, per_image_iw: bits/dim of each image, in dataset order.
    """

    bpd_single: float | None
    bpd_iw: float | None
    n_images: int
    iw_samples: int | None
    per_image_single: np.ndarray | None
    per_image_iw: np.ndarray | None

    @property
    def finite(self) -> bool:
        """Whether every computed bound is a finite number (NaN weights give NaN bits/dim)."""
        return all(v is None or math.isfinite(v) for v in (self.bpd_single, self.bpd_iw))

    def to_dict(self) -> dict[str, Any]:
        """The summary numbers (no per-image arrays), for JSON: a non-finite bound is ``None``
        (JSON has no NaN) and ``"non_finite": True`` is added."""

        def number(v: float | None) -> float | None:
            return v if v is None or math.isfinite(v) else None

        out = {
            "bpd_single": number(self.bpd_single),
            "bpd_iw": number(self.bpd_iw),
            "n_images": self.n_images,
            "iw_samples": self.iw_samples,
        }
        if not self.finite:
            out["non_finite"] = True
        return out


def _fingerprint(model: DenseFlow) -> str:
    """SHA-256 of the model's state, so that a partial result is never resumed with other
    weights."""
    h = hashlib.sha256(repr(model.config.to_dict()).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_partial(partial: Path) -> dict:
    """The progress file ``partial`` as written by :func:`evaluate`; anything else is refused,
    since :func:`evaluate` replaces and finally deletes the file at ``partial_path``."""
    try:
        state = torch.load(partial, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        state, reason = None, f"{err.__class__.__name__}"
    else:
        reason = "no evaluation-progress marker"
    if not isinstance(state, dict) or state.get("format") != _PARTIAL_FORMAT:
        raise InputError(
            f"partial_path {partial} exists and is not an evaluation progress file ({reason}); "
            "evaluate would overwrite and then delete it: pass another partial_path"
        )
    return state


def evaluate(
    model: DenseFlow,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    iw_samples: int | None = None,
    chunk_size: int = 50,
    single: bool = True,
    device: str | torch.device | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    progress: bool | None = True,
    partial_path: str | os.PathLike | None = None,
    save_interval_s: float = 60.0,
    num_workers: int = 0,
    amp: str = "none",
    cuda_graphs: bool = False,
) -> EvalResult:
    """Bits/dim of ``model`` on ``dataset``: single-sample and, with ``iw_samples``, importance-
    weighted.

    Runs in eval mode (BatchNorm uses its running statistics) without gradients, and puts the model
    back in the mode it was in. Per batch, the single-sample bound is drawn first, then the
    ``iw_samples`` draws, all from one generator in a fixed order, so a fixed ``seed`` (and batch
    size) gives the same numbers every time.

    Arguments:
        model: the flow (evaluated where it is, or moved to ``device``).
        dataset: uint8 ``(3, H, W)`` images (or tuples starting with one), e.g.
            ``densflow.data.load_dataset(name, data_dir, "test")``.
        batch_size: images per forward pass; the importance-weighted bound runs
            ``batch_size * chunk_size`` images per pass.
        iw_samples: k of the importance-weighted bound (paper: :data:`PAPER_IW_SAMPLES`).
        chunk_size: importance samples per forward pass (paper: 50).
        single: compute the single-sample bound (turn off to save one pass per batch when only the
            importance-weighted bound is wanted).
        device: where to run (default: where the model's parameters are; ``"auto"``: CUDA when
            available).
        seed: seeds a new generator on ``device`` when ``generator`` is None.
        generator: the source of every draw; advanced in place.
        progress: a progress bar (None: on a terminal and in notebooks).
        partial_path: where to keep progress: it is written atomically at most every
            ``save_interval_s`` seconds (0: after every batch) and on Ctrl-C, read back by a later
            call with the same arguments and model, and deleted when the evaluation completes.
            An existing file there that is not such a progress file is refused (``ValueError``)
            before any work, so that nothing else is ever overwritten or deleted; the progress of
            another model or other settings is replaced, with a warning.
        num_workers: DataLoader workers.
        amp: ``"bf16"`` runs the coupling and conditioning networks in bfloat16
            (:func:`densflow.performance.autocast`; log-dets, prior and bits/dim stay float32,
            within 0.01 bits/dim of float32). The paper's numbers are float32: the default.
            For the other speed switches, prepare the model first
            (:func:`~densflow.performance.prepare_model`). A compiled model compiles once per
            shape: the last batch, when smaller, runs eagerly instead
            (:func:`~densflow.performance.run_eagerly`).
        cuda_graphs: replay each pass from a CUDA graph (:class:`~densflow.performance.GraphedFlow`,
            one per shape, captured at its first use): on a GPU the eager pass is bound by the
            host issuing its operators. The noise is drawn eagerly with the same draws, so the
            numbers are the eager ones (within rounding) and a progress file resumes either way.
            The last batch, when smaller, runs eagerly, as for a compiled model. On a CPU a
            warning says it runs eagerly. Not with a compiled model.

    Returns:
        An :class:`EvalResult`.
    """
    if iw_samples is None and not single:
        raise InputError("nothing to compute: single=False and no iw_samples")
    batch_size, chunk_size = (
        check_int("batch_size", batch_size),
        check_int("chunk_size", chunk_size),
    )
    if iw_samples is not None:
        iw_samples = check_int("iw_samples", iw_samples)
    check_int("num_workers", num_workers, minimum=0)
    check_float("save_interval_s", save_interval_s, minimum=0.0)
    if len(dataset) == 0:
        raise InputError("dataset is empty: there is no image to evaluate")
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    n = len(dataset)
    settings = {
        "n_images": n,
        "batch_size": batch_size,
        "iw_samples": iw_samples,
        "chunk_size": chunk_size,
        "single": single,
        "seed": seed if generator is None else "caller's generator",
    }
    if amp != "none":  # float32 keeps the settings of progress files written before amp existed
        settings["amp"] = amp
    precision = autocast(device, amp)  # checks amp before any work
    graphed = _graphed_flow(model, amp, device, "evaluation") if cuda_graphs else None
    if generator is None:
        generator = torch.Generator(device).manual_seed(seed)
    per_single: list[Tensor] = []
    per_iw: list[Tensor] = []
    done = 0
    partial = Path(partial_path) if partial_path is not None else None
    fingerprint = _fingerprint(model) if partial is not None else None
    if partial is not None and partial.is_dir():
        raise InputError(f"partial_path {partial} is a folder; give a file path")
    if partial is not None and partial.exists():
        state = _read_partial(partial)  # refuses a file that is not ours before any work
        if state.get("version") == _PARTIAL_VERSION and (
            state["settings"] == settings and state["model"] == fingerprint
        ):
            done, per_single, per_iw = state["done"], list(state["single"]), list(state["iw"])
            generator.set_state(state["generator"])
        else:
            warnings.warn(
                f"{partial} holds the progress of another model or other settings; starting over",
                stacklevel=2,
            )

    was_training = model.training
    model.eval()
    loader = DataLoader(
        Subset(dataset, range(done, n)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
    )
    bar = progress_bar(n, initial=done, desc="evaluate", unit="img", enabled=progress)
    last_save = time.monotonic()
    # The state after the last finished batch: what a progress file records. A Ctrl-C in the
    # middle of a batch has advanced the generator already, so the live one cannot be saved then.
    committed = (done, len(per_single), len(per_iw), generator.get_state())

    def save_progress() -> None:
        d, s, i, gen = committed
        atomic_save({"format": _PARTIAL_FORMAT, "version": _PARTIAL_VERSION,
                     "settings": settings, "model": fingerprint, "done": d,
                     "single": per_single[:s], "iw": per_iw[:i],
                     "generator": gen}, partial)  # fmt: skip

    try:
        with torch.no_grad(), precision:
            for x in loader:
                x = x.to(device)
                # A compiled model would compile the last, smaller batch anew (twice with
                # iw_samples: its own shape and the repeated one) for a single use, and
                # cuda_graphs would capture it anew (warm-up passes and the memory of new graphs).
                tail = len(x) < batch_size < n
                flow = model if graphed is None or tail else graphed
                with run_eagerly() if tail else contextlib.nullcontext():
                    if single:
                        log_p = flow.log_prob(x, generator)
                        per_single.append(bits_per_dim(log_p, model.image_shape).cpu())
                    if iw_samples is not None:
                        log_p = flow.iw_log_prob(x, iw_samples, chunk_size, generator)
                        per_iw.append(bits_per_dim(log_p, model.image_shape).cpu())
                done += len(x)
                if partial is not None:
                    committed = (done, len(per_single), len(per_iw), generator.get_state())
                bar.update(len(x))
                if (
                    partial is not None
                    and done < n
                    and (time.monotonic() - last_save >= save_interval_s)
                ):
                    save_progress()
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        # Ctrl-C keeps every finished batch: the same call resumes from the last one.
        if partial is not None and 0 < committed[0] < n:
            save_progress()
        raise
    finally:
        bar.close()
        model.train(was_training)
    if partial is not None and partial.exists():
        _read_partial(partial)  # still ours (nothing replaced it meanwhile): safe to delete
        partial.unlink()

    def summary(values: list[Tensor]) -> tuple[float | None, np.ndarray | None]:
        if not values:
            return None, None
        arr = torch.cat(values).double().numpy()
        return float(arr.mean()), arr

    bpd_single, arr_single = summary(per_single)
    bpd_iw, arr_iw = summary(per_iw)
    return EvalResult(bpd_single, bpd_iw, n, iw_samples, arr_single, arr_iw)


def _graphed_flow(model: DenseFlow, amp: str, device: torch.device, what: str) -> GraphedFlow:
    """The :class:`GraphedFlow` of ``cuda_graphs=True``; on a CPU it runs eagerly, and says so."""
    flow = GraphedFlow(model, amp)  # refuses a compiled model before any work
    if torch.device(device).type != "cuda":
        warnings.warn(
            f"cuda_graphs needs a CUDA device; on {device} the {what} runs eagerly",
            RuntimeWarning,
            stacklevel=3,
        )
    return flow


def draw_samples(
    model: DenseFlow,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    amp: str = "none",
    cuda_graphs: bool = False,
) -> Tensor:
    """``n`` uint8 samples ``(n, 3, H, W)`` drawn in eval mode; the model's mode is restored.

    Weights holding NaN or inf are refused: their samples would quantize to black images.
    ``cuda_graphs``: the sampling pass replayed from a CUDA graph
    (:class:`~densflow.performance.GraphedFlow`), with the eager path's draws, so the same
    samples (within rounding on a GPU); eager, with a warning, on a CPU. For one call the capture
    (warm-up passes, then the recording) costs more than the replay saves: it pays for a
    :class:`GraphedFlow` kept and sampled from again.
    """
    device = next(model.parameters()).device
    precision = autocast(device, amp)  # checks amp before any work
    bad = nonfinite_entries(model.state_dict())
    if bad:
        raise InputError(
            f"the model's weights are not finite ({len(bad)} tensors hold NaN or inf, e.g. "
            f"{bad[0]}), so its samples would be meaningless; sample from a checkpoint saved "
            "before training diverged"
        )
    flow = _graphed_flow(model, amp, device, "sampling") if cuda_graphs else model
    was_training = model.training
    model.eval()
    try:
        with precision:
            return flow.sample(n, temperature=temperature, generator=generator)
    finally:
        model.train(was_training)


def save_sample_grid(
    model: DenseFlow,
    path: str | os.PathLike,
    n: int = 64,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    nrow: int = 8,
    amp: str = "none",
    cuda_graphs: bool = False,
) -> Tensor:
    """Draw ``n`` images (in eval mode) and write them as a PNG grid of ``nrow`` columns.

    ``amp="bf16"`` runs the coupling networks in bfloat16 (:func:`densflow.performance.autocast`):
    the same draws, so the pixels differ slightly from the float32 samples. ``cuda_graphs``: see
    :func:`draw_samples`.
    Returns the uint8 samples ``(n, 3, H, W)``.
    """
    from torchvision.utils import save_image

    n, nrow = check_int("n", n), check_int("nrow", nrow)
    check_float("temperature", temperature, minimum=0.0)
    samples = draw_samples(model, n, temperature, generator, amp, cuda_graphs)
    with atomic_write(path) as f:  # a crash or a full disk never leaves half a PNG
        save_image(samples.float().cpu() / 255.0, f, format="png", nrow=nrow, padding=2)
    return samples

"""What an evaluation returns, and the refusal of results that are not numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.errors import InputError

__all__ = ["EvalResult", "NonFiniteError"]


class NonFiniteError(InputError):
    """An evaluation or a sample grid whose values are NaN or inf (weights that are not finite,
    or finite but so large that the flow overflows): refused, with nothing written."""


@dataclass(frozen=True)
class EvalResult:
    """Test-set bits/dim.

    Attributes:
        bpd_single: mean single-sample bits/dim (None when not computed).
        bpd_iw: mean importance-weighted bits/dim (None without ``iw_samples``).
        n_images: images evaluated.
        iw_samples: k of the importance-weighted bound.
        per_image_single, per_image_iw: bits/dim of each image, in dataset order (float64).
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

    def check_finite(self) -> None:
        """Refuse (:class:`NonFiniteError`) a result with a NaN or inf bits/dim, naming how many
        images and the first."""
        bad = np.zeros(self.n_images, dtype=bool)
        for values in (self.per_image_single, self.per_image_iw):
            if values is not None:
                bad |= ~np.isfinite(values)
        if bad.any() or not self.finite:
            first = int(np.argmax(bad))
            raise NonFiniteError(
                f"the bits/dim are not finite (NaN or inf) for {int(bad.sum())} of "
                f"{self.n_images} images (the first: image {first}), so the model's weights or "
                "outputs are not finite: evaluate an earlier checkpoint of the run"
            )

    def to_dict(self, per_image: bool = False) -> dict[str, Any]:
        """The summary numbers for JSON (``per_image``: also each image's bits/dim, in dataset
        order, as ``per_image_single`` and ``per_image_iw``); a non-finite bound is ``None``
        (JSON has no NaN) and ``"non_finite": True`` is added."""

        def number(v: float | None) -> float | None:
            return v if v is None or math.isfinite(v) else None

        out: dict[str, Any] = {
            "bpd_single": number(self.bpd_single),
            "bpd_iw": number(self.bpd_iw),
            "n_images": self.n_images,
            "iw_samples": self.iw_samples,
        }
        if per_image:
            for name in ("per_image_single", "per_image_iw"):
                values = getattr(self, name)
                out[name] = None if values is None else [number(float(v)) for v in values]
        if not self.finite:
            out["non_finite"] = True
        return out

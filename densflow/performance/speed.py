"""The speed switches of a pass, checked together once: what training (:mod:`densflow.training`)
and evaluation (:mod:`densflow.evaluation`) are given, and what their step or pass is chosen from.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.errors import InputError
from .precision import AMP_MODES

__all__ = ["Speed"]


@dataclass(frozen=True)
class Speed:
    """The speed switches: none of them changes the numbers beyond rounding (bf16: within 0.01
    bits/dim).

    Attributes:
        amp: ``"bf16"`` runs the networks inside the flow in bfloat16 (:func:`autocast`).
        channels_last: NHWC memory format (:func:`to_channels_last`).
        compile: ``torch.compile`` of the flow (:func:`compile_model`).
        cuda_graphs: passes replayed from CUDA graphs (:class:`GraphedFlow`); not with
            ``compile``, whose capture has not been validated.
    """

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise InputError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.cuda_graphs and self.compile:
            raise InputError(
                "choose one of compile and cuda_graphs (--compile, --cuda-graphs): a capture of "
                "the compiled flow has not been validated"
            )

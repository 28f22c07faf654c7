r"""Training-time augmentation of uint8 image batches (random flip and shift).

Augmentation works on whole *batches* with an explicit generator, so that a resumed training run
draws exactly the same flips and shifts. Each dataset's paper augmentation is its registry entry's
``augmentation`` (:func:`densflow.data.augmentation_for`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..utils.errors import InputError

__all__ = ["Augmentation"]


@dataclass(frozen=True)
class Augmentation:
    r"""Random horizontal flip and integer shift of a uint8 batch.

    Each image is flipped with probability 1/2, then translated by :math:`(d_x, d_y)` drawn
    uniformly from :math:`\{-s..s\}^2` with edge replication,
    :math:`y[c, i, j] = x[c, \mathrm{clamp}(i - d_y), \mathrm{clamp}(j - d_x)]`. This equals padding
    the image by ``s`` pixels (mode ``'replicate'``) and cropping back at the offset
    :math:`(s - d_y, s - d_x)`. All draws come from ``generator`` (flips first, then shifts), never
    from the global RNG or from DataLoader workers, so a resumed run is bit-exact.

    Arguments:
        flip: whether to flip horizontally with probability 1/2.
        shift: the largest shift ``s`` in pixels (0 disables shifting).

    Example:
        >>> aug = Augmentation(flip=True, shift=1)
        >>> x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> aug(x, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 8, 8])
    """

    flip: bool = True
    shift: int = 0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augments a batch ``x`` of shape ``(B, C, H, W)``, dtype uint8; returns the same shape."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise InputError(f"expected a uint8 batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
        B, C, H, W = x.shape
        if self.shift < 0 or self.shift >= min(H, W):
            raise InputError(f"shift {self.shift} does not fit images of size {H}x{W}")
        if not self.flip and self.shift == 0:
            return x
        # Draw on the generator's device (CPU generators are the norm), then move the few numbers.
        dev = generator.device
        flip = torch.rand(B, generator=generator, device=dev) < 0.5 if self.flip else None
        if self.shift > 0:
            d = torch.randint(-self.shift, self.shift + 1, (2, B), generator=generator, device=dev)
            dx, dy = d[0].to(x.device), d[1].to(x.device)
        else:
            dx = dy = torch.zeros(B, dtype=torch.long, device=x.device)
        # Source row/column of every output pixel; clamping is the edge replication.
        rows = (torch.arange(H, device=x.device) - dy[:, None]).clamp(0, H - 1)  # (B, H)
        cols = (torch.arange(W, device=x.device) - dx[:, None]).clamp(0, W - 1)  # (B, W)
        if flip is not None:  # flip first, then shift: out[j] = x[W - 1 - clamp(j - dx)]
            cols = torch.where(flip.to(x.device)[:, None], W - 1 - cols, cols)
        x = x.gather(2, rows[:, None, :, None].expand(B, C, H, W))
        return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))

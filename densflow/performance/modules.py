"""How a speed transform changes a built model: it replaces submodules, on their parents, by new
modules built from them (sharing their parameters and buffers where they have any), so that the
model's own classes and instances are never altered."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["replace_modules"]


def replace_modules(
    model: nn.Module, kind: type[nn.Module], build: Callable[[nn.Module], nn.Module]
) -> int:
    """Set every submodule of ``model`` whose type is exactly ``kind`` to ``build(submodule)``
    on its parent; returns how many. ``model`` itself is not replaced. A module reached under two
    names is built once and set under both."""
    built: dict[int, nn.Module] = {}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                if id(child) not in built:
                    built[id(child)] = build(child)
                    count += 1
                setattr(parent, name, built[id(child)])
    return count

"""The optimizer of a run: Adamax or Adam with a multi-tensor update, optionally compiled, with a
learning rate that a schedule sets each step and a state dict that loads either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..performance import compile_with_fallback

__all__ = [
    "build_optimizer",
    "compile_optimizer",
    "make_capturable",
    "optimizer_state_dict",
    "restore_eager_groups",
    "set_lr",
]


def build_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """``"adamax"`` (the paper's) or ``"adam"`` over ``model``'s parameters, betas (0.9, 0.999).

    ``foreach``: one multi-tensor update instead of a Python loop over the parameters (the
    default on CUDA only; on the CPU it takes ~30 % off the optimizer step).
    """
    optimizer = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam}[name]
    return optimizer(model.parameters(), lr=lr, foreach=True)


def compile_optimizer(optimizer: torch.optim.Optimizer, **compile_kwargs) -> Callable[[], None]:
    """The update of ``optimizer`` compiled with ``torch.compile``: a function that runs
    ``optimizer.step()``'s update of every parameter in a few fused kernels. The optimizer itself
    is left as it is but for its groups' settings (below), so ``optimizer.step()`` stays eager.

    Eagerly, even the multi-tensor (``foreach``) update runs op by op and tensor by tensor on a
    CPU, with a host read of each step count: 401 parameter tensors in the small model, 3,423 in
    the paper's. So that a learning-rate schedule does not recompile it, the optimizer is made
    capturable first (:func:`make_capturable`: a tensor ``lr``, which torch's Adam takes in its
    multi-tensor path only when capturable). The update is the
    eager one's, up to the float32 rounding of the bias corrections (torch's step counts are
    float32 tensors): ~1e-7 relative for Adamax, ~1e-5 for Adam's :math:`1 - \\beta_2^t` in
    its first steps.

    Save :func:`optimizer_state_dict`, which loads into an eager optimizer too. If compilation
    fails, a warning is issued, the groups get back their float ``lr`` and ``capturable``
    setting, and the update runs eagerly.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"compile_optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    make_capturable(optimizer)
    step = compile_with_fallback(
        type(optimizer).step,
        f"{type(optimizer).__name__}.step",
        lambda *args: restore_eager_groups(optimizer),
        **compile_kwargs,
    )

    def update() -> None:
        step(optimizer)

    return update


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Prepare ``optimizer`` for a step that is compiled or captured in a CUDA graph: each
    group's ``lr`` becomes a 0-dim tensor of its parameters' dtype and device (set it with
    :func:`set_lr`), and the groups are made ``capturable``, so that the step counts and bias
    corrections stay tensors on the device and the step reads nothing on the host. Idempotent;
    :func:`restore_eager_groups` undoes it, and :func:`optimizer_state_dict` saves the state as
    the eager optimizer would."""
    if hasattr(optimizer, "densflow_capturable"):
        return
    optimizer.densflow_capturable = [group.get("capturable") for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        first = group["params"][0]
        group["lr"] = torch.tensor(float(group["lr"]), dtype=first.dtype, device=first.device)
        if "capturable" in group:
            group["capturable"] = True
            _move_step_counts(optimizer, group, on_host=False)


def restore_eager_groups(optimizer: torch.optim.Optimizer) -> None:
    """Undo :func:`make_capturable`: float ``lr`` and the groups' own ``capturable`` setting."""
    eager = getattr(optimizer, "densflow_capturable", None)
    if eager is None:
        return
    for group, capturable in zip(optimizer.param_groups, eager, strict=True):
        group["lr"] = float(group["lr"])
        if capturable is not None:
            group["capturable"] = capturable
            if not capturable:
                _move_step_counts(optimizer, group, on_host=True)
    del optimizer.densflow_capturable


def _move_step_counts(optimizer: torch.optim.Optimizer, group: dict, on_host: bool) -> None:
    """The step counts of ``group``'s parameters onto the host (where a non-capturable optimizer
    keeps them) or beside their parameters (a capturable one)."""
    for p in group["params"]:
        state = optimizer.state.get(p, {})
        if isinstance(state.get("step"), Tensor):
            state["step"] = state["step"].to("cpu" if on_host else p.device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: in place where it is a tensor (:func:`compile_optimizer`),
    so that the compiled step sees the new value without recompiling."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as the eager optimizer would give it: float ``lr``, the
    ``capturable`` setting from before :func:`compile_optimizer`, step counts on the CPU where
    not capturable. Checkpoints written from it load into compiled and eager optimizers alike."""
    state_dict = optimizer.state_dict()
    eager = getattr(optimizer, "densflow_capturable", None)
    if eager is None:
        return state_dict
    groups = []
    for group, capturable in zip(state_dict["param_groups"], eager, strict=True):
        group = dict(group, lr=float(group["lr"]))
        if capturable is not None:
            group["capturable"] = capturable
            if not capturable:  # eager non-capturable steps read their count on the host
                for i in group["params"]:
                    state = state_dict["state"].get(i)
                    if state is not None and isinstance(state.get("step"), Tensor):
                        state_dict["state"][i] = dict(state, step=state["step"].cpu())
        groups.append(group)
    return {"state": state_dict["state"], "param_groups": groups}

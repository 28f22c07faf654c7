"""How speed transforms change a model (densflow.performance.modules): new modules on the
parents, never the model's own classes."""

from __future__ import annotations

from torch import nn

from densflow.performance import replace_modules


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


def test_replace_modules_sets_new_modules_on_their_parents_and_keeps_the_rest():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(nn.Linear(2, 2), shared))
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    before = list(model.state_dict())
    assert replace_modules(model, nn.Linear, Wrapped) == 2  # the shared one is built once
    assert type(model[0]) is Wrapped and model[0] is model[2][1]  # and set under both names
    assert model[0].inner is shared and model[2][0].inner is linears[1]
    assert type(shared) is nn.Linear  # the replaced module itself is untouched
    assert type(model[1]) is nn.ReLU
    # every parameter under its old name, one level down
    renamed = [".inner.".join(k.rsplit(".", 1)) for k in before]
    assert list(model.state_dict()) == renamed and "2.1.inner.weight" in renamed
    # the root itself is never replaced, and the kind must match exactly
    assert replace_modules(shared, nn.Linear, Wrapped) == 0
    assert replace_modules(model, nn.Module, Wrapped) == 0

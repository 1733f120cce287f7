"""Scoped patches restore the exact original objects, on exit and on exceptions, and nest."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_hires.patching import PatchScope
from tests.host.state import module_state as model_state


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 3, padding=1))


def test_exception_mid_scope_restores_everything() -> None:
    model = small_model()
    before = model_state(model)
    conv = model[0]
    forward_before = conv.forward
    x = torch.randn(1, 3, 8, 8)
    y_before = model(x)

    with pytest.raises(RuntimeError, match="mid-scope"):
        with PatchScope() as scope:
            scope.set_attr(conv, "dilation", (2, 2))
            scope.set_attr(conv, "padding", (2, 2))
            scope.wrap_forward(model[2], lambda fwd, h: fwd(h) * 3)
            scope.set_attr(model[1], "weight", nn.Parameter(torch.zeros(4)))
            scope.set_attr(model, "extra_flag", True)  # an attribute that did not exist
            assert model[2].forward is not type(model[2]).forward
            assert not torch.allclose(model(x), y_before)
            raise RuntimeError("mid-scope")

    assert model_state(model) == before
    assert "forward" not in vars(model[2]) and not hasattr(model, "extra_flag")
    assert conv.forward == forward_before and conv.dilation == (1, 1)
    assert torch.equal(model(x), y_before)


def test_nested_scopes_restore_in_order() -> None:
    model = small_model()
    conv = model[2]
    x = torch.randn(1, 4, 6, 6)
    base = conv(x)
    with PatchScope() as outer:
        outer.wrap_forward(conv, lambda fwd, h: fwd(h) + 1)
        outer_forward = conv.forward
        with PatchScope() as inner:
            inner.wrap_forward(conv, lambda fwd, h: fwd(h) * 2)
            inner.set_attr(conv, "padding", (0, 0))
            assert torch.allclose(conv(torch.nn.functional.pad(x, (1, 1, 1, 1))), (base + 1) * 2, atol=1e-6)
        assert conv.forward is outer_forward and conv.padding == (1, 1)
        assert torch.allclose(conv(x), base + 1)
    assert "forward" not in vars(conv)
    assert torch.equal(conv(x), base)


def test_instance_attribute_gets_its_own_object_back() -> None:
    class Holder:
        pass

    holder = Holder()
    original = object()
    holder.thing = original  # type: ignore[attr-defined]
    with PatchScope() as scope:
        scope.set_attr(holder, "thing", object())
        scope.set_attr(holder, "thing", object())  # patched twice in one scope
    assert holder.thing is original  # type: ignore[attr-defined]


def test_all_undos_run_even_if_one_fails() -> None:
    model = small_model()
    scope = PatchScope()
    scope.set_attr(model[0], "dilation", (3, 3))
    scope.set_attr(model, "temporary", 1)
    del model.temporary  # someone removed it behind our back: its undo (delattr) will fail
    scope.set_attr(model[2], "padding", (0, 0))
    with pytest.raises(AttributeError):
        scope.restore()
    assert model[0].dilation == (1, 1) and model[2].padding == (1, 1)
    assert not scope.active


def test_live_registry_lists_unrestored_scopes_and_restores_them() -> None:
    from lib_hires.patching import LIVE

    model = small_model()
    before = model_state(model)
    assert len(LIVE) == 0
    with PatchScope() as done:
        done.set_attr(model[0], "dilation", (2, 2))
        assert len(LIVE) == 1
    assert len(LIVE) == 0
    leftover = PatchScope()  # e.g. a process killed between patch and restore
    leftover.wrap_forward(model[2], lambda fwd, h: fwd(h))
    leftover.set_attr(model[0], "padding", (0, 0))
    assert len(LIVE) == 1
    assert LIVE.restore_all() == 1
    assert len(LIVE) == 0 and model_state(model) == before

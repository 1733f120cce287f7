"""Scoped, reversible patches of host objects (module attributes and forward wrappers).

Every change a method makes to the host's modules goes through a `PatchScope`. The scope records how
to undo each change when it is made and undoes all of them, newest first, when it exits, whether the
body returned, raised or was interrupted. Scopes nest: an inner scope may wrap a forward that an
outer scope already wrapped, and restores exactly the outer wrapper.

"Restored" means identical objects: an attribute set on an instance gets its original object back;
one that was not in the instance before (a class attribute such as `forward`) is deleted again, so
the class's attribute shows through as it did.
"""
from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from torch import nn

Forward = Callable[..., Any]
ForwardWrapper = Callable[..., Any]  # called as wrapper(original_forward, *args, **kwargs)


def _owns(obj: object, name: str) -> bool:
    """Whether `name` is stored on the instance itself (not inherited from its class)."""
    if name in vars(obj):
        return True
    if isinstance(obj, nn.Module):
        return name in obj._parameters or name in obj._buffers or name in obj._modules
    return False


class PatchScope:
    """A context manager collecting reversible changes; exiting restores everything it changed.

    A scope holding changes is listed in `LIVE` until it is restored, so the WebUI glue can restore any
    leftover defensively (at the start of a job, when the script is unloaded).
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> PatchScope:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    def set_attr(self, obj: object, name: str, value: object) -> None:
        """`setattr(obj, name, value)` until the scope exits."""
        LIVE.add(self)
        if _owns(obj, name):
            original = getattr(obj, name)
            self._undo.append(lambda: setattr(obj, name, original))
        else:
            self._undo.append(lambda: delattr(obj, name))
        setattr(obj, name, value)

    def wrap_forward(self, module: nn.Module, wrapper: ForwardWrapper) -> None:
        """Make `module(*args)` call `wrapper(original_forward, *args, **kwargs)` until the scope exits.

        `original_forward` is whatever `module.forward` was when the wrapper was installed (the class's
        forward, or an outer scope's wrapper), so wrappers compose.
        """
        original: Forward = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            return wrapper(original, *args, **kwargs)

        self.set_attr(module, "forward", forward)

    def restore(self) -> None:
        """Undo every change, newest first. All undos run even if one fails; the first error is raised."""
        error: BaseException | None = None
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except BaseException as exc:  # keep undoing the rest, then report
                error = error or exc
        LIVE.discard(self)
        if error is not None:
            raise error

    @property
    def active(self) -> bool:
        """Whether the scope currently holds changes."""
        return bool(self._undo)


class LiveScopes:
    """The registry of scopes that hold changes (normally empty between sampler runs)."""

    def __init__(self) -> None:
        self._scopes: list[PatchScope] = []

    def add(self, scope: PatchScope) -> None:
        if scope not in self._scopes:
            self._scopes.append(scope)

    def discard(self, scope: PatchScope) -> None:
        if scope in self._scopes:
            self._scopes.remove(scope)

    def __len__(self) -> int:
        return len(self._scopes)

    def restore_all(self) -> int:
        """Restore every live scope, newest first; returns how many there were."""
        count = len(self._scopes)
        while self._scopes:
            self._scopes[-1].restore()
        return count


LIVE = LiveScopes()

"""User-defined KV eviction policies in Python.

Subclass :class:`Policy` and pass an instance as ``tova.Engine(model, policy=MyPolicy())``. Per
layer and step, when the layer holds more than ``kv_size`` tokens, the engine calls
``select(layer, view)``, which returns the slots to evict. The engine checks every answer (the
right count, distinct, valid, not protected) and raises a clear error otherwise; an exception
raised by the policy comes out of ``generate``/``eval`` as that same exception (a
``StopIteration`` as a ``RuntimeError`` naming the policy), and the engine starts a new sequence
(it stays usable).

Cost: every call is a round trip from the C++ engine into Python (for every layer, at every
step once the store is full), so a Python policy decodes noticeably slower than the built-in
ones; ``bench/`` reports by how much. The built-ins and C plugins (:class:`PluginPolicy`, CLI
``--policy-plugin``) run through the same C ABI without that cost.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence, Union

from . import _check

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    from ._core import PolicyView

    Slots = Union[Sequence[int], npt.NDArray[np.integer]]

__all__ = ["Policy", "PluginPolicy", "get_include"]


class Policy:
    """Base class of Python eviction policies.

    Class attributes:
        name: shown in errors and statistics.
        needs_probs: the engine fills ``view.probs`` / ``view.probs_mean`` (the current query's
            attention) for ``select``.
        every_step: call ``select`` at every step, with ``view.n_evict == 0`` when nothing must
            go (for policies that accumulate statistics, like H2O); its return value is then
            ignored.

    ``view`` (a :class:`tova.PolicyView`) exposes, as numpy arrays (read-only copies made when
    first read in the call, which the policy may keep; ``state`` is writable and written back):
    ``pos`` (int32 [n_slots], -1 = empty), ``protect`` (uint8, 1 = may not be
    evicted), ``probs`` (float32 [n_heads, n_slots]), ``probs_mean`` (float32 [n_slots]) and
    ``state`` (float32 [n_slots], writable, the policy's own per-slot value, 0 for a new token);
    and the numbers ``layer``, ``capacity``, ``n_slots``, ``n_valid``, ``n_evict``, ``n_heads``,
    ``t`` (the current token's position), ``new_slot`` and ``seq`` (the engine sequence). The view is valid only during the call.
    """

    name: str = "python"
    needs_probs: bool = True
    every_step: bool = False

    def select(self, layer: int, view: "PolicyView") -> "Slots":
        """Return exactly ``view.n_evict`` distinct slot indices to evict (a list, a tuple or
        a 1-d integer array)."""
        raise NotImplementedError("Policy subclasses must implement select(layer, view)")

    def on_insert(self, layer: int, slot: int, view: "PolicyView") -> None:
        """A token was written into ``slot`` (optional hook; costs a call per layer and token)."""

    def on_evict(self, layer: int, slots: Sequence[int], view: "PolicyView") -> None:
        """The engine evicted ``slots`` (optional hook)."""

    def reset(self) -> None:
        """A sequence was cleared (optional hook; called when :meth:`reset_sequence` is not
        overridden)."""

    def reset_sequence(self, seq: int) -> None:
        """Sequence ``seq`` was cleared (optional hook). An engine with ``n_seq > 1`` runs one
        policy object for all its sequences: ``view.seq`` says which one each call is for."""


class PluginPolicy:
    """A C policy plugin: a shared library exporting ``tova_policy_create`` (the ABI of
    ``tova/policy_plugin.h``, whose folder :func:`get_include` gives), for
    ``tova.Engine(model, policy=PluginPolicy("./libmine.so", "arg=1"))``; the CLI's
    ``--policy-plugin PATH --policy-args ARGS``. The library is loaded when the engine is made
    (an error there names the file)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], args: str = "") -> None:
        self.path: str = _check.path("path", path)
        self.args: str = _check.text("args", args)
        if "\0" in self.args:
            raise ValueError("args contains a NUL character")

    def __repr__(self) -> str:
        return f"PluginPolicy({self.path!r}, {self.args!r})"


def get_include() -> str:
    """The folder holding ``tova/policy_plugin.h``, to compile a C plugin against:
    ``cc -shared -fPIC -I"$(python -c 'import tova; print(tova.get_include())')" mine.c -o libmine.so``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")

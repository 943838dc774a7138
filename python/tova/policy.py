"""User-defined KV eviction policies in Python.

Subclass :class:`Policy` and pass an instance as ``tova.Engine(model, policy=MyPolicy())``. Per
layer and step, when the layer holds more than ``kv_size`` tokens, the engine calls
``select(layer, view)``, which returns the slots to evict. The engine checks every answer (the
right count, distinct, valid, not protected) and raises a clear error otherwise; an exception
raised by the policy comes out of ``generate``/``eval`` as that same exception, and the engine
starts a new sequence (it stays usable).

Cost: every call is a round trip from the C++ engine into Python (for every layer, at every
step once the store is full), so a Python policy decodes noticeably slower than the built-in
ones; ``bench/`` reports by how much. The built-ins and C plugins (``tova run --policy-plugin``)
run through the same C ABI without that cost.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._core import PolicyView

__all__ = ["Policy"]


class Policy:
    """Base class of Python eviction policies.

    Class attributes:
        name: shown in errors and statistics.
        needs_probs: the engine fills ``view.probs`` / ``view.probs_mean`` (the current query's
            attention) for ``select``.
        every_step: call ``select`` at every step, with ``view.n_evict == 0`` when nothing must
            go (for policies that accumulate statistics, like H2O); its return value is then
            ignored.

    ``view`` (a ``tova._core.PolicyView``) exposes, as numpy arrays viewing the engine's memory
    (no copies): ``pos`` (int32 [n_slots], -1 = empty), ``protect`` (uint8, 1 = may not be
    evicted), ``probs`` (float32 [n_heads, n_slots]), ``probs_mean`` (float32 [n_slots]) and
    ``state`` (float32 [n_slots], writable, the policy's own per-slot value, 0 for a new token);
    and the numbers ``layer``, ``capacity``, ``n_slots``, ``n_valid``, ``n_evict``, ``n_heads``,
    ``t`` (the current token's position), ``new_slot`` and ``seq`` (the engine sequence). The view is valid only during the call.
    """

    name: str = "python"
    needs_probs: bool = True
    every_step: bool = False

    def select(self, layer: int, view: "PolicyView") -> Sequence[int]:
        """Return exactly ``view.n_evict`` distinct slot indices to evict."""
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

"""Sampling settings: a typed ``SamplingParams`` over the C++ struct ``tova._core.SamplingParams``.

The defaults below mirror ``cpp/src/sampler.h`` (a test checks they agree), and every range check
is the C++ ``SamplingParams::validate()``: constructing a ``SamplingParams`` calls it through
``to_core()``, so Python and C++ accept and reject exactly the same values with the same messages
(ValueError naming the field). A value of the wrong type (a string, a float for an int field)
raises TypeError. Fields may be reassigned; ``to_core()`` validates again whenever it is used.

The sampler applies its stages in this order (a stage switched off by its parameter is skipped):

    penalties -> top-k -> top-p -> min-p -> temperature -> dist      (temperature > 0)
    penalties -> greedy                                              (temperature == 0)

top-k, top-p and min-p look at the untempered distribution (as llama.cpp's default chain does);
temperature then reshapes the probabilities of the tokens that survived.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, TypedDict

from . import _core

if TYPE_CHECKING:  # pragma: no cover
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

__all__ = ["SamplingParams", "SamplingFields"]


class SamplingFields(TypedDict, total=False):
    """The :class:`SamplingParams` fields given as keywords (``generate(p, temperature=0)``):
    the type a checker holds ``**fields`` to, so that a misspelt or mistyped one is caught
    before it runs. Meanings and ranges: :class:`SamplingParams` (a test keeps the two equal)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    penalty_last_n: int
    seed: int


def unknown_names_error(unknown: Iterable[str], valid: Iterable[str], what: str) -> TypeError:
    """``unknown ...(s) x; did you mean y?; valid names: ...``: a misspelt keyword named with
    its closest valid spelling."""
    valid = sorted(valid)
    unknown = sorted(unknown)
    # The closest spelling, else a valid name the unknown one begins (temp -> temperature).
    hints = [m[0] for m in ((difflib.get_close_matches(u, valid, n=1) or
                             [v for v in valid if len(u) >= 3 and v.startswith(u)][:1]) for u in unknown) if m]
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    return TypeError(f"unknown {what}(s) {', '.join(unknown)}{hint}; valid names: {', '.join(valid)}")

_INT_FIELDS = ("top_k", "penalty_last_n", "seed")


def _number_of_kind(value: Any, *, integral: bool) -> bool:
    """An int (numpy's too) where ``integral``, else any real number; not a bool (an int
    subclass: True as a top_k is almost surely a mistake)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral if integral else numbers.Real)


@dataclass
class SamplingParams:
    """How the next token is chosen from the model's logits.

    Attributes:
        temperature: divides the logits before the draw; >= 0, and 0 means greedy (argmax, ties to
            the lowest token id, penalties still applied).
        top_k: keep only the k most likely tokens; >= 0, 0 = off.
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p;
            0 < top_p <= 1, 1 = off.
        min_p: drop tokens whose probability is below ``min_p`` times the top token's;
            0 <= min_p <= 1, 0 = off.
        repeat_penalty: for tokens among the last ``penalty_last_n``, positive logits are divided and
            negative logits multiplied by it (CTRL / llama.cpp); > 0, 1 = off.
        frequency_penalty: subtracted from a logit once per occurrence in the window; 0 = off.
        presence_penalty: subtracted once from the logit of any token present in the window; 0 = off.
        penalty_last_n: how many of the most recent tokens the penalties look at; 0 = penalties off,
            -1 = every token since the sampler was created or reset.
        seed: seed of the random draw; the same seed, settings and logits give the same tokens on
            every platform; -1 = a fresh random seed for each sampler.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = -1

    def __post_init__(self) -> None:
        self.to_core()  # validates: raises ValueError naming the field

    def to_core(self) -> "_core.SamplingParams":
        """The C++ struct with these values, validated (ValueError names the field at fault)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            name, value = f.name, getattr(self, f.name)
            is_int_field = name in _INT_FIELDS
            if not _number_of_kind(value, integral=is_int_field):
                kind = "an int" if is_int_field else "a number"
                raise TypeError(
                    f"sampling parameter {name} = {value!r} has the wrong type: expected {kind}"
                )
            if is_int_field:
                value = int(value)
                bits = 64 if name == "seed" else 32
                if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                    raise ValueError(
                        f"sampling parameter {name} = {value!r} is out of range: "
                        f"does not fit in int{bits}"
                    )
            else:
                try:
                    value = float(value)
                    # The engine keeps 32-bit floats: a value that would change class on the way
                    # (1e-50 becoming 0 or -0.0, 1e39 infinite) is refused here, as it is.
                    narrowed = struct.unpack("f", struct.pack("f", value))[0]
                except OverflowError:
                    raise ValueError(
                        f"sampling parameter {name} = {value!r} is out of range: too large"
                    ) from None
                if narrowed == 0.0 and value != 0.0:
                    raise ValueError(
                        f"sampling parameter {name} = {value!r} is out of range: too close to 0 "
                        "for a 32-bit float (use 0)"
                    )
            values[name] = value
        core = _core.SamplingParams(**values)
        core.validate()
        return core

    def replace(self, **fields: "Unpack[SamplingFields]") -> "SamplingParams":
        """A copy with some fields changed (validated); unknown names raise TypeError.

        ``Engine.generate(..., sampling=None, **fields)`` uses this: fields override ``sampling``."""
        return dataclasses.replace(self, **fields)  # (__init__ names unknown ones: _checked_init)

    @classmethod
    def greedy(cls, **fields: "Unpack[SamplingFields]") -> "SamplingParams":
        """Deterministic decoding: temperature 0 (argmax, ties to the lowest id)."""
        return cls(temperature=0.0).replace(**fields)

    def sampler(self) -> "_core.Sampler":
        """A fresh C++ sampler chain with these settings."""
        return _core.Sampler(self.to_core())


def _checked_init(init: Any) -> Any:
    """The dataclass's __init__, with unknown keywords named as :meth:`SamplingParams.replace`
    names them (with their closest valid spelling) instead of Python's bare message."""
    names = [f.name for f in dataclasses.fields(SamplingParams)]

    @functools.wraps(init)
    def checked(self: SamplingParams, *args: Any, **fields: Any) -> None:
        unknown = set(fields) - set(names)
        if unknown:
            raise unknown_names_error(unknown, names, "sampling parameter")
        init(self, *args, **fields)

    return checked


SamplingParams.__init__ = _checked_init(SamplingParams.__init__)  # type: ignore[method-assign]

"""Argument checks of the public Python API, in one place.

Every public function checks its arguments here before anything reaches the core: a value of the
wrong type raises ``TypeError`` and a value out of range raises ``ValueError``, each naming the
argument, what it accepts and what it got. Settings whose valid values the core defines (policy
names, kv types, limits that depend on the model) are type-checked here and range-checked by the
core, which raises ``ValueError`` naming the setting. ``docs/python-arguments.md`` is the table of
what each public function accepts.
"""
from __future__ import annotations

import numbers
import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _kind(value: Any) -> str:
    return type(value).__name__


def integer(name: str, value: Any, *, minimum: Optional[int] = None,
            maximum: Optional[int] = INT32_MAX) -> int:
    """``value`` as an int: an ``int`` or numpy integer (not ``bool``), within ``[minimum,
    maximum]`` (``None``: unbounded on that side)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_kind(value)}")
    v = int(value)
    low = minimum is not None and v < minimum
    high = maximum is not None and v > maximum
    if low or high:
        # A range whose top is only "fits in int32/int64" is shown by its bottom alone.
        if minimum is not None and maximum is not None and maximum not in (INT32_MAX, INT64_MAX):
            raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {v}")
        if low:
            raise ValueError(f"{name} must be >= {minimum}, got {v}")
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def index(name: str, value: Any, n: int, *, what: Optional[str] = None) -> int:
    """``value`` as an index into ``n`` things (``seq``, ``layer``): an int in ``[0, n)``."""
    v = integer(name, value, minimum=None, maximum=None)
    if not 0 <= v < n:
        raise ValueError(f"{what or name} {v} is out of range [0, {n})")
    return v


def optional_integer(name: str, value: Any, *, minimum: Optional[int] = None,
                     maximum: Optional[int] = INT32_MAX) -> Optional[int]:
    """``None``, or :func:`integer`."""
    return None if value is None else integer(name, value, minimum=minimum, maximum=maximum)


def boolean(name: str, value: Any) -> bool:
    """``value`` as a bool: ``True``/``False`` (or a numpy bool), nothing else (``"no"`` is not
    false)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_kind(value)}")
    return bool(value)


def optional_boolean(name: str, value: Any) -> Optional[bool]:
    return None if value is None else boolean(name, value)


def number(name: str, value: Any, *, minimum: Optional[float] = None) -> float:
    """``value`` as a finite float (an int or float, not ``bool``), ``>= minimum`` when given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_kind(value)}")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return v


def text(name: str, value: Any) -> str:
    """``value`` as a ``str`` that UTF-8 can encode (a lone surrogate such as ``"\\ud800"`` is
    a ``ValueError``, not text)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: {e.reason} at index {e.start} "
                         f"({value[e.start]!r})") from None
    return value


def optional_text(name: str, value: Any) -> Optional[str]:
    return None if value is None else text(name, value)


def choice(name: str, value: Any) -> Optional[str]:
    """``None`` or a setting's name as a ``str`` (the core checks it is a known one); an empty
    name is not "not given"."""
    value = optional_text(name, value)
    if value is not None and not value.strip():
        raise ValueError(f"{name} is empty: give a name, or leave it out for the default")
    return value


def policy(value: Any) -> Any:
    """``None``, a policy name (the core checks it is known), a :class:`tova.Policy` or a
    :class:`tova.PluginPolicy`."""
    from .policy import PluginPolicy, Policy

    if value is not None and not isinstance(value, (str, Policy, PluginPolicy)):
        raise TypeError("policy must be a policy name (str), a tova.Policy instance or a "
                        f"tova.PluginPolicy, got {_kind(value)}")
    return value


def stop_strings(value: Any) -> List[str]:
    """``stop``: ``None``, one string, or a sequence of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence):
        raise TypeError(f"stop must be a str or a list of str, got {_kind(value)}")
    out = [text(f"stop[{i}]", s) for i, s in enumerate(value)]
    for i, s in enumerate(out):
        if not s:
            raise ValueError(f"stop strings must not be empty (stop[{i}] is '')")
    return out


def token_ids(name: str, value: Any, n_vocab: int) -> List[int]:
    """``value`` as a list of token ids: a sequence of ints or a 1-d integer numpy array, each
    in ``[0, n_vocab)``."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.size == 0):
            raise TypeError(f"{name} must be a 1-d array of integer token ids, got a "
                            f"{value.ndim}-d {value.dtype} array")
        ids = value.tolist()
    elif isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids (ints), got {_kind(value)}")
    else:
        ids = list(value)
        for i, t in enumerate(ids):
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
                raise TypeError(f"{name}[{i}] must be an int token id, got {_kind(t)}")
        ids = [int(t) for t in ids]
    for i, t in enumerate(ids):
        if not 0 <= t < n_vocab:
            bound = f"[0, {n_vocab})" if n_vocab < INT32_MAX else "(must be >= 0)"  # (vocabulary unknown)
            raise ValueError(f"{name}[{i}]: token id {t} is out of range {bound}")
    return ids


def prompt_value(value: Any, name: str = "prompt") -> Union[str, Sequence[int], np.ndarray]:
    """A prompt must be text or token ids; anything else is a ``TypeError`` naming both."""
    if isinstance(value, str):
        return text(name, value)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a str or a sequence of token ids, got {_kind(value)}")
    return value


def path(name: str, value: Any) -> str:
    """A file path or name: ``str`` or ``os.PathLike``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {_kind(value)}")
    if not value:
        raise ValueError(f"{name} is empty")
    if "\0" in value:
        raise ValueError(f"{name} contains a NUL character")
    return value

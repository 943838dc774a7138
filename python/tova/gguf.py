"""Reading GGUF model files: metadata, tensor infos and tensor data (dequantized or raw)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from . import _check, _core


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a GGUF file and how it is stored."""

    name: str
    ne: Tuple[int, ...]
    """Dimensions in ggml order: ``ne[0]`` is the contiguous (row) length."""
    shape: Tuple[int, ...]
    """Dimensions in numpy order (``ne`` reversed), the shape :meth:`GGUFFile.tensor` returns."""
    type: str
    type_id: int
    offset: int
    """Byte offset of the data, relative to the start of the data section."""
    nbytes: int
    n_elements: int


class GGUFFile:
    """A memory-mapped GGUF file (versions 2 and 3).

    Every count, length, offset and size in the file is checked before use: a malformed file
    raises :class:`tova.GGUFError` (a ``ValueError``) naming the file and the field or tensor at
    fault; a missing file raises ``FileNotFoundError``.

    >>> f = GGUFFile("model.gguf")                              # doctest: +SKIP
    >>> f.metadata["general.architecture"]                      # doctest: +SKIP
    'llama'
    """

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self._f = _core.GGUFFile(_check.path("path", path))
        self._metadata: Dict[str, Any] | None = None
        self._tensors: Dict[str, TensorInfo] | None = None

    @property
    def path(self) -> str:
        return self._f.path

    @property
    def version(self) -> int:
        return self._f.version

    @property
    def alignment(self) -> int:
        return self._f.alignment

    @property
    def data_offset(self) -> int:
        """Byte offset of the data section in the file."""
        return self._f.data_offset

    @property
    def metadata(self) -> Dict[str, Any]:
        """All key-value metadata as Python values (arrays as lists), in file order."""
        if self._metadata is None:
            self._metadata = self._f.metadata()
        return self._metadata

    @property
    def metadata_types(self) -> Dict[str, str]:
        """The stored GGUF type of every metadata key, e.g. ``'uint32'`` or ``'array[string]'``."""
        return self._f.metadata_types()

    @property
    def tensors(self) -> Dict[str, TensorInfo]:
        """Tensor name -> :class:`TensorInfo`, in file order."""
        if self._tensors is None:
            self._tensors = {
                name: TensorInfo(name=name, **info) for name, info in self._f.tensor_infos().items()
            }
        return self._tensors

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, in numpy shape (``ne`` reversed)."""
        return self._f.tensor(_check.text("name", name))

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes as a read-only uint8 array viewing the mapping (no copy)."""
        return self._f.raw(_check.text("name", name))

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, version={self.version}, tensors={len(self.tensors)})"

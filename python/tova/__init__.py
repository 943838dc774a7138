"""tova: fixed-memory LLM inference on GGUF models.

The KV cache is a fixed pool of slots per layer that never grows; when it is full, a policy
(TOVA by default) decides which cached token to drop.

>>> import tova                                                           # doctest: +SKIP
>>> tova.Engine("smollm2-135m-instruct").generate("The capital of France is", temperature=0)
"""
import importlib
from typing import Any

from . import _core
from ._core import GGUFError, TovaError, cuda_built, cuda_device_count
from .engine import Engine
from .gguf import GGUFFile, TensorInfo
from .handle import Handle
from .policy import PluginPolicy, Policy, get_include
from .sampling import SamplingParams

__version__: str = _core.__version__

__all__ = ["Engine", "Handle", "SamplingParams", "Policy", "PluginPolicy", "get_include", "GGUFError", "TovaError", "GGUFFile", "TensorInfo",
           "cuda_built", "cuda_device_count", "__version__"]


def __getattr__(name: str) -> Any:
    """The submodules the documentation names (tova.models.resolve, tova.chat.render_prompt,
    tova.perplexity.perplexity), reachable after a plain ``import tova``. Imported on first use,
    not with the package: ``python -m tova.models`` (the CLI's resolver) must find its module
    not yet imported. tova.server needs the [server] extra and is imported on its own."""
    if name in ("chat", "models", "perplexity"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tova' has no attribute {name!r}")

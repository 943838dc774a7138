"""tova: fixed-memory LLM inference on GGUF models.

The KV cache is a fixed pool of slots per layer that never grows; when it is full, a policy
(TOVA by default) decides which cached token to drop.

>>> import tova                                                           # doctest: +SKIP
>>> tova.Engine("smollm2-135m-instruct").generate("The capital of France is", temperature=0)
"""
import importlib as _importlib
from typing import TYPE_CHECKING, List as _List

from . import _core
from ._core import GGUFError, PolicyView, TovaError, cuda_built, cuda_device_count
from .engine import Engine
from .gguf import GGUFFile, TensorInfo
from .handle import Handle
from .policy import PluginPolicy, Policy, get_include
from .sampling import SamplingFields, SamplingParams

__version__: str = _core.__version__

__all__ = ["Engine", "Handle", "SamplingParams", "SamplingFields", "Policy", "PolicyView", "PluginPolicy",
           "get_include", "GGUFError", "TovaError", "GGUFFile", "TensorInfo", "cuda_built",
           "cuda_device_count", "__version__"]

_LAZY = ("chat", "models", "perplexity")

if TYPE_CHECKING:  # (typed as the modules they are; imported on first use at run time)
    from . import chat, models, perplexity
else:
    def __getattr__(name: str) -> object:
        """The submodules the documentation names (tova.models.resolve,
        tova.chat.render_prompt, tova.perplexity.perplexity), reachable after a plain
        ``import tova``. Imported on first use, not with the package: ``python -m tova.models``
        (the CLI's resolver) must find its module not yet imported. tova.server needs the
        [server] extra and is imported on its own."""
        if name in _LAZY:
            return _importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'tova' has no attribute {name!r}")


def __dir__() -> _List[str]:
    return sorted(set(globals()) | set(_LAZY))

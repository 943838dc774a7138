"""tova: fixed-memory LLM inference on GGUF models."""
from . import _core
from ._core import GGUFError, TovaError

__version__ = _core.__version__

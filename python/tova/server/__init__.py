"""``tova serve``: an OpenAI-compatible HTTP server (``pip install 'tova[server]'``).

:func:`create_app` builds the FastAPI application over an :class:`tova.Engine`; ``tova serve``
(:mod:`tova.server.cli`) runs it with uvicorn. The modules: ``schemas`` (request checks),
``errors`` (OpenAI-style error bodies), ``service`` (admission and the engine bridge),
``routes`` (the endpoints), ``metrics`` (Prometheus text), ``app`` (the factory).
FastAPI is imported only when this package's ``create_app`` is used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .service import ServeConfig

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)

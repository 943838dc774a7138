"""The FastAPI application of ``tova serve``: :func:`create_app` over an :class:`tova.Engine`."""
from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine
from .errors import APIError, error_body
from .routes import router
from .service import ServeConfig, Service, default_max_prompt_tokens

__all__ = ["create_app", "ServeConfig"]

log = logging.getLogger("tova.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class _Gate:
    """Pure ASGI middleware (it does not buffer streams): the bound on requests handled at once,
    the API key of ``/v1/*`` and the request counter of ``/metrics``."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        key = service.config.api_key
        self.key = key.encode() if key else None
        self.inside = 0  # requests being handled (the event loop's thread alone counts them)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        endpoint = next((e for e in _ENDPOINTS if path == e or path.startswith(e + "/")), "other")
        status = {"code": 500}

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        limit = self.service.config.max_requests
        try:
            if not self._host_allowed(scope):
                await self._send_error(send_counting, 421, error_body(
                    "this server answers requests for its own address only (the Host header names "
                    "another: a DNS-rebinding page?)", "invalid_request_error", None, "misdirected_request"), [])
                return
            if self.inside >= limit:
                await self._send_error(send_counting, 503, error_body(
                    f"the server is handling {limit} requests at once, its limit (--max-connections); "
                    "retry later", "server_error", None, "server_busy"), [(b"retry-after", b"1")])
                return
            if self.key is not None and path.startswith("/v1/") and not self._authorized(scope):
                await self._send_error(send_counting, 401, error_body(
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                    "invalid_request_error", None, "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
                return
            self.inside += 1
            try:
                await self.app(scope, receive, send_counting)
            finally:
                self.inside -= 1
        finally:
            self.service.metrics.request(endpoint, status["code"])

    def _host_allowed(self, scope: Scope) -> bool:
        allowed = self.service.config.allowed_hosts
        if not allowed:
            return True
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1").strip().lower()
                if host.startswith("["):  # [::1]:8080
                    host = host[1:host.find("]")] if "]" in host else host
                else:
                    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
                return host in allowed
        return False  # (HTTP/1.1 requires a Host header)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key or b"")
        return False

    @staticmethod
    async def _send_error(send: Send, status: int, error: Dict[str, Any], headers: List[Tuple[bytes, bytes]]) -> None:
        body = json.dumps(error).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})


class _ErrorJSON(JSONResponse):
    """An error's JSON, non-ASCII escaped: a message that quotes the request (a lone surrogate
    in a model name, say) can always be encoded."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def create_app(engine: Engine, config: Optional[ServeConfig] = None) -> FastAPI:
    """An OpenAI-compatible HTTP application serving ``engine``.

    Args:
        engine: the model; its ``n_seq`` sequences run the requests side by side.
        config: the model name clients use, the queue bound, the prompt limit and the API key
            (default: the engine's model name, a queue of 64, 32768 prompt tokens or the
            ``n_ctx`` of policy ``full`` if less, no key).

    The app's ``state.service`` is the :class:`Service`; closing the app (its lifespan's end)
    cancels what still runs. The engine is the caller's to close.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be a tova.Engine, got {type(engine).__name__}")
    if config is not None and not isinstance(config, ServeConfig):
        raise TypeError(f"config must be a tova.server.ServeConfig, got {type(config).__name__}")
    if config is None:
        config = ServeConfig(model_id=engine.model_info.get("name") or engine.path,
                             max_prompt_tokens=default_max_prompt_tokens(engine))
    service = Service(engine, config)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="tova serve", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(router)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _ErrorJSON(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:  # (OpenAI's words for a path it does not serve)
            message = f"Invalid URL ({request.method} {request.url.path})"
        return _ErrorJSON(error_body(message, "invalid_request_error", None, None),
                          status_code=exc.status_code,
                          headers=getattr(exc, "headers", None))  # (405: Allow)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _ErrorJSON(error_body(str(exc), "invalid_request_error", None, None), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")  # (what failed is in the server's log, not the answer)
        return _ErrorJSON(error_body("internal error (the server's log says what failed)",
                                     "server_error", None, None), status_code=500)

    app.add_middleware(_Gate, service=service)  # type: ignore[arg-type]
    if config.cors_origins:  # outside the key check: a browser's preflight carries no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "HEAD", "POST", "OPTIONS"], allow_headers=["*"])
    return app

"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""
from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["APIError", "error_body"]


class APIError(Exception):
    """An error answered to the client as OpenAI does.

    Args:
        status: the HTTP status (400, 401, 404, 429, 500, 503).
        message: what went wrong, for a person to read.
        type: OpenAI's error class: ``invalid_request_error``,
            ``rate_limit_error``, ``server_error``.
        param: the request field at fault, if one is.
        code: a short machine-readable code (``model_not_found``, ``context_length_exceeded``, ...).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None,
               code: Optional[str] = None) -> Dict[str, Any]:
    """The JSON body of an error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)

"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status.

Every failure the server reports goes through APIError, so clients (the openai package among
them) always get the same body; `from_exception` maps what the model layer raises.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi.responses import JSONResponse

from ..errors import ContextFullError
from ..llama import ContextLengthExceededError

log = logging.getLogger("ggml_rerope.server")


class APIError(Exception):
    """An error answer: HTTP status, OpenAI error fields, extra headers (Retry-After ...)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def loading() -> APIError:
    return APIError(503, "Loading model", type="unavailable_error", code="model_loading", headers={"Retry-After": "1"})


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down", type="unavailable_error", code="shutting_down")


def queue_full(retry_after_s: int) -> APIError:
    return APIError(503, "All slots are busy and the queue is full; retry later", type="unavailable_error",
                    code="server_busy", headers={"Retry-After": str(retry_after_s)})


def unauthorized() -> APIError:
    return APIError(401, "Invalid API key: send 'Authorization: Bearer <key>'", type="authentication_error",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def context_length(exc: ContextLengthExceededError, max_tokens: Optional[int], chat: bool) -> APIError:
    """llama-cpp-python's server message for a prompt longer than the context."""
    where = "in the messages" if chat else "in your prompt"
    return APIError(
        400,
        f"This model's maximum context length is {exc.n_ctx} tokens. However, you requested "
        f"{exc.prompt_tokens + (max_tokens or 0)} tokens ({exc.prompt_tokens} {where}, {max_tokens} for the "
        f"completion). Please reduce the length of the {'messages' if chat else 'prompt'} or completion.",
        param="messages" if chat else "prompt", code="context_length_exceeded")


def from_exception(exc: BaseException, max_tokens: Optional[int] = None, chat: bool = False) -> APIError:
    """The answer for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthExceededError):
        return context_length(exc, max_tokens, chat)
    if isinstance(exc, ContextFullError):
        return APIError(400, str(exc), param="messages" if chat else "prompt", code="context_length_exceeded")
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, str(exc), code="invalid_value")
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    return APIError(500, f"{type(exc).__name__}: {exc}", type="internal_server_error")


def validation_message(errors) -> APIError:
    """A 400 naming the first bad field of a pydantic / FastAPI validation error list."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}",
                        code="invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")

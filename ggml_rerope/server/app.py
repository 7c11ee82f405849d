"""The FastAPI application: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health, /metrics and the tokenizer endpoints. Every error is OpenAI-shaped (errors.py).

    app = create_app(ServerConfig(model="model.gguf", parallel=2))   # then: uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import errors
from .config import ServerConfig
from .runtime import Runtime, SlotFactory
from .schemas import ChatCompletionRequest, CompletionRequest
from .tokens import router as token_router

# Chat keywords llama-cpp-python's handlers take beyond the sampling ones (tools, JSON mode):
# passed through when a request has them, so what the handler cannot do is its own 400.
_CHAT_PASSTHROUGH = ("tools", "tool_choice", "functions", "function_call", "response_format")


def create_app(config: ServerConfig, make_slots: Optional[SlotFactory] = None) -> FastAPI:
    rt = Runtime(config, make_slots)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt.start_loading(asyncio.get_running_loop())
        yield
        await rt.shutdown()

    app = FastAPI(title="ggml_rerope server", lifespan=lifespan)
    app.state.runtime = rt
    bearer = Depends(HTTPBearer(auto_error=False))

    async def authenticate(credentials: Optional[HTTPAuthorizationCredentials] = bearer):
        if config.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), config.api_key.encode()):
            raise errors.unauthorized()

    auth = Depends(authenticate)

    @app.exception_handler(errors.APIError)
    async def _api_error(request: Request, exc: errors.APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return errors.validation_message(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return errors.APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    @app.get("/health")
    async def health():
        try:
            scheduler = rt.ready()
        except errors.APIError as e:
            return e.response()
        return {"status": "ok", "slots_idle": scheduler.n_idle, "slots_processing": scheduler.n_running}

    @app.get("/v1/models", dependencies=[auth])
    async def models():
        meta = {"n_ctx": config.n_ctx, "n_ctx_train": rt.n_ctx_train, "slots": config.parallel,
                "rope_scaling": rt.schemes.server_scheme[0]}
        return {"object": "list", "data": [{"id": rt.model_id, "object": "model", "created": rt.created,
                                             "owned_by": "ggml_rerope", "meta": meta}]}

    @app.get("/metrics", dependencies=[auth])
    async def metrics():
        return PlainTextResponse(rt.metrics.render(rt.gauges), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest, request: Request):
        rt.ready()
        kwargs = body.sampling_kwargs()
        kwargs.update(prompt=body.prompt, suffix=body.suffix, echo=body.echo, logprobs=body.logprobs,
                      stream=body.stream, model=body.model or rt.model_id)
        job = rt.new_job("completion", kwargs, body.model_extra)
        return await rt.serve(job, request, body.include_usage)

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        rt.ready()
        try:
            messages = [m.flat() for m in body.messages]
        except ValueError as e:
            raise errors.APIError(400, str(e), param="messages", code="invalid_value") from None
        kwargs = body.sampling_kwargs()
        kwargs.update(messages=messages, stream=body.stream, logprobs=body.logprobs, top_logprobs=body.top_logprobs,
                      model=body.model or rt.model_id)
        extra = body.model_extra or {}
        kwargs.update({k: extra[k] for k in _CHAT_PASSTHROUGH if extra.get(k) is not None})
        job = rt.new_job("chat", kwargs, extra)
        return await rt.serve(job, request, body.include_usage)

    app.include_router(token_router(auth))

    @app.get("/")
    async def root():
        return JSONResponse({"object": "ggml_rerope.server", "model": rt.model_id,
                             "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                                           "/metrics", "/tokenize", "/detokenize"]})

    return app

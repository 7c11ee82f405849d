"""Tokenizer endpoints: llama.cpp server's /tokenize and /detokenize, and llama-cpp-python's
/extras/tokenize, /extras/tokenize/count and /extras/detokenize. They use a vocabulary of their
own (the slots' run in worker threads), one call at a time, off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel

from . import errors
from .schemas import DetokenizeRequest, TokenizeRequest


class _ExtrasTokenize(BaseModel):
    input: str
    model: Optional[str] = None


class _ExtrasDetokenize(BaseModel):
    tokens: list[int]
    model: Optional[str] = None


def _runtime(request: Request):
    rt = request.app.state.runtime
    rt.ready()
    return rt


async def _call(rt, fn, *args):
    def locked():
        with rt.tokenizer_lock:
            return fn(rt.tokenizer, *args)

    try:
        return await asyncio.to_thread(locked)
    except (ValueError, TypeError) as e:
        raise errors.APIError(400, str(e), code="invalid_value") from None


def _pieces_bytes(tok, tokens) -> bytes:
    """llama-cpp-python's detokenize: the tokens' pieces joined."""
    return b"".join(tok.token_to_piece(int(t)) for t in tokens)


def router(auth) -> APIRouter:
    r = APIRouter(dependencies=[auth])

    @r.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        rt = _runtime(request)
        tokens = await _call(rt, lambda tok: tok.tokenize(body.content, add_bos=body.add_special, special=True))
        if body.with_pieces:
            pieces = await _call(rt, lambda tok: [tok.token_to_piece(t).decode("utf-8", "replace") for t in tokens])
            return {"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces)]}
        return {"tokens": tokens}

    @r.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        rt = _runtime(request)
        data = await _call(rt, _pieces_bytes, body.tokens)
        return {"content": data.decode("utf-8", "replace")}

    @r.post("/extras/tokenize")
    async def extras_tokenize(body: _ExtrasTokenize, request: Request):
        rt = _runtime(request)
        return {"tokens": await _call(rt, lambda tok: tok.tokenize(body.input, add_bos=True, special=True))}

    @r.post("/extras/tokenize/count")
    async def extras_count(body: _ExtrasTokenize, request: Request):
        rt = _runtime(request)
        return {"count": len(await _call(rt, lambda tok: tok.tokenize(body.input, add_bos=True, special=True)))}

    @r.post("/extras/detokenize")
    async def extras_detokenize(body: _ExtrasDetokenize, request: Request):
        rt = _runtime(request)
        data = await _call(rt, _pieces_bytes, body.tokens)
        return {"text": data.decode("utf-8", "replace")}

    return r

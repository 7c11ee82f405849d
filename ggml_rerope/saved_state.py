"""Saved state of a Model (llama-cpp-python's save_state / load_state, llama.cpp's --prompt-cache).

A state is the tokens in the KV cache and the cache's raw rows (ggml_rerope_state_get). Keys are
cached unrotated, so a state is valid under every position scheme: load it into a Model of any
scheme and the next evaluation equals what set_rope_scaling on the saving Model would give (rows of
layers > 0 were computed under the saving scheme: only a one-layer model's equal a fresh prefill
under another). The scheme a state was made under is recorded for information only; loading keeps
the Model's own.

File format (little-endian), version 1:
    MAGIC (8 bytes) | version u32 | meta_len u32 | n_tokens u64 | kv_len u64
    | meta (JSON: model identity, kv_type, scheme) | tokens (int32 x n_tokens) | kv (kv_len bytes)
    | crc32 u32 of every byte before it
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from .errors import InvalidArgumentError, ModelLoadError

MAGIC = b"GRRSTATE"
VERSION = 1
_HEAD = struct.Struct("<IIQQ")
_CRC = struct.Struct("<I")

# The model_info fields that must match for a cache to be meaningful; the hash covers all of them.
IDENTITY_FIELDS = ("architecture", "n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_vocab")


def model_identity(info: dict) -> dict:
    """The identity of a model for saved states: its shapes and a hash of its whole model info
    (rotary base, trained context, parameter count, weight bytes, ...)."""
    ident = {k: info[k] for k in IDENTITY_FIELDS}
    text = json.dumps({k: info[k] for k in sorted(info)}, sort_keys=True, default=repr)
    ident["info_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return ident


@dataclass
class ModelState:
    """What Model.save_state returns (cf. llama-cpp-python's LlamaState)."""

    tokens: list[int]
    kv: Union[bytes, memoryview]  # ggml_rerope_state_get: header + raw K/V rows (mapped_file: a view)
    kv_type: str                 # "f16" or "f32"
    identity: dict               # model_identity() of the model that made it
    scheme: str = ""             # the scheme it was made under (information only)
    extra: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def check_compatible(state: ModelState, identity: dict, kv_type: str) -> None:
    """InvalidArgumentError naming the first thing in which `state` does not fit this model / cache."""
    for key in (*IDENTITY_FIELDS, "info_sha256"):
        if state.identity.get(key) != identity.get(key):
            what = "model info" if key == "info_sha256" else key
            raise InvalidArgumentError(
                f"saved state is of another model: {what} {state.identity.get(key)!r}, this model has "
                f"{identity.get(key)!r}"
            )
    if state.kv_type != kv_type:
        raise InvalidArgumentError(f"saved state has a {state.kv_type} KV cache, this model's is {kv_type}")


def write_file(path: Union[str, os.PathLike], state: ModelState) -> None:
    """Writes `state` to `path` (through a temporary file, so a reader never sees half of one)."""
    meta = json.dumps({"identity": state.identity, "kv_type": state.kv_type, "scheme": state.scheme,
                       "extra": state.extra}, sort_keys=True).encode()
    tokens = np.asarray(state.tokens, dtype="<i4").tobytes()
    head = MAGIC + _HEAD.pack(VERSION, len(meta), len(state.tokens), len(state.kv))
    crc = 0
    for part in (head, meta, tokens, state.kv):
        crc = zlib.crc32(part, crc)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for part in (head, meta, tokens, state.kv, _CRC.pack(crc)):
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parse(data: memoryview, path) -> ModelState:
    """The state in a whole file's bytes; its kv is a view of `data` (no copy of the rows)."""
    fixed = len(MAGIC) + _HEAD.size
    if len(data) < fixed + _CRC.size or bytes(data[: len(MAGIC)]) != MAGIC:
        raise ModelLoadError(f"{path} is not a ggml_rerope state file (bad magic or too short)")
    version, meta_len, n_tokens, kv_len = _HEAD.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise ModelLoadError(f"{path}: state file version {version}, this package reads version {VERSION}")
    body = fixed + meta_len + 4 * n_tokens + kv_len
    if len(data) != body + _CRC.size:
        raise ModelLoadError(
            f"{path}: state file has {len(data)} bytes, its header says {body + _CRC.size} "
            f"({'truncated' if len(data) < body + _CRC.size else 'trailing bytes'})"
        )
    (crc,) = _CRC.unpack_from(data, body)
    if zlib.crc32(data[:body]) != crc:
        raise ModelLoadError(f"{path}: state file is corrupt (checksum mismatch)")
    try:
        meta = json.loads(bytes(data[fixed : fixed + meta_len]))
        identity, kv_type = dict(meta["identity"]), str(meta["kv_type"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: state file metadata is unreadable: {e}") from None
    off = fixed + meta_len
    tokens = np.frombuffer(data[off : off + 4 * n_tokens], dtype="<i4").tolist()
    return ModelState(tokens=tokens, kv=data[off + 4 * n_tokens : body], kv_type=kv_type, identity=identity,
                      scheme=str(meta.get("scheme", "")), extra=dict(meta.get("extra") or {}))


def read_file(path: Union[str, os.PathLike]) -> ModelState:
    """The state in `path`; ModelLoadError when it is missing, not a state file, of another version,
    truncated or corrupt (checksum). A state of its own (kv is bytes: it can be kept, compared, pickled);
    Model.load_state_file reads through mapped_file instead."""
    try:
        with open(path, "rb") as f:
            data = memoryview(f.read())
    except OSError as e:
        raise ModelLoadError(f"cannot read state file {path}: {e.strerror or e}") from None
    state = _parse(data, path)
    state.kv = bytes(state.kv)
    return state


@contextlib.contextmanager
def mapped_file(path: Union[str, os.PathLike]) -> Iterator[ModelState]:
    """read_file's state over the file mapped into memory, for the time of the with-block: the
    checksum and the copy into the cache are then the only passes over the rows (a read would add
    one, and a buffer as large as the file)."""
    try:
        with open(path, "rb") as f:  # an empty file cannot be mapped: _parse refuses its empty view
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else None
    except OSError as e:
        raise ModelLoadError(f"cannot read state file {path}: {e.strerror or e}") from None
    view = memoryview(mm if mm is not None else b"")
    try:
        state = _parse(view, path)
        try:
            yield state
        finally:
            state.kv.release()
    finally:
        view.release()
        if mm is not None:
            mm.close()

"""Tokenizer and chat template of a GGUF file, both from llama-cpp-python.

The vocabulary is loaded with `llama_cpp.Llama(path, vocab_only=True)` (no weights), and the
chat template is the Jinja2 template in the GGUF metadata (`tokenizer.chat_template`), rendered
by llama-cpp-python's own Jinja2ChatFormatter, exactly as `Llama.create_chat_completion` does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Optional

import llama_cpp
from llama_cpp._utils import suppress_stdout_stderr
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .errors import ModelLoadError

# llama.cpp's fallback when a GGUF has no template: ChatML, which most instruct models use.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer:
    """Vocabulary of one GGUF file: text <-> token ids, special tokens, chat prompt."""

    def __init__(self, model_path: str, verbose: bool = False):
        try:
            # n_ctx / n_batch tiny: vocab_only still builds a (weightless) context and a
            # scores buffer of n_batch x n_vocab floats in Python; keep both small.
            with suppress_stdout_stderr(disable=verbose):
                self._llama = llama_cpp.Llama(
                    model_path=model_path, vocab_only=True, n_ctx=16, n_batch=16, verbose=verbose
                )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"cannot load the vocabulary of {model_path}: {e}") from e
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.bos_id = int(self._llama.token_bos())
        self.eos_id = int(self._llama.token_eos())
        self.metadata: dict[str, str] = dict(self._llama.metadata)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._formatter: Optional[Jinja2ChatFormatter] = None

    # -- text <-> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of `text`. add_bos adds the model's special prefix tokens where its vocabulary
        asks for them (llama.cpp's add_special); special=True parses "<|im_start|>"-style tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, bool(add_bos), bool(special))
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, bool(add_bos), bool(special))
            if n < 0:
                raise RuntimeError(f"tokenization failed ({n})")
        return list(buf[:n])

    def detokenize_bytes(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """UTF-8 bytes of a token sequence (llama.cpp's detokenizer, leading-space rules included)."""
        tokens = [self._check_token(t) for t in tokens]
        if not tokens:
            return b""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = 8 * len(tokens) + 64
        for _ in range(2):
            out = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(tokens), out, size, False, bool(special))
            if n >= 0:
                return out.raw[:n]
            size = -n
        raise RuntimeError(f"detokenization failed ({n})")

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self.detokenize_bytes(tokens, special).decode("utf-8", errors="replace")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """Bytes of one token; may be part of a multi-byte UTF-8 character."""
        token = self._check_token(token)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT, <|im_end|> and the like, as the vocabulary marks them."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, int(token)))

    def _check_token(self, token) -> int:
        t = int(token)
        if t != token or not 0 <= t < self.n_vocab:
            raise ValueError(f"token id {token!r} is out of range [0, {self.n_vocab})")
        return t

    # -- chat --------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        return self.metadata.get("tokenizer.chat_template") or _CHATML

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        if self._formatter is None:
            piece = lambda t: self._llama._model.token_get_text(t) if t >= 0 else ""  # noqa: E731
            self._formatter = Jinja2ChatFormatter(
                template=self.chat_template,
                eos_token=piece(self.eos_id),
                bos_token=piece(self.bos_id),
                stop_token_ids=[self.eos_id],
            )
        return self._formatter

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, rendered by the GGUF's chat template."""
        fmt = self._chat_formatter()
        fmt_saved = fmt.add_generation_prompt
        fmt.add_generation_prompt = add_generation_prompt
        try:
            return fmt(messages=list(messages)).prompt
        finally:
            fmt.add_generation_prompt = fmt_saved

    def chat_stop(self) -> list[str]:
        """Stop strings the template implies (llama-cpp-python uses the EOS token's text)."""
        eos = self._llama._model.token_get_text(self.eos_id) if self.eos_id >= 0 else ""
        return [eos] if eos else []

    def chat_tokens(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Tokens of a conversation's prompt, tokenized as llama-cpp-python's chat handler does:
        special tokens parsed, no extra BOS (the template writes what the model needs)."""
        return self.tokenize(self.chat_prompt(messages, add_generation_prompt), add_bos=False, special=True)

    def close(self) -> None:
        llama = getattr(self, "_llama", None)
        if llama is not None:
            self._llama = None
            llama.close()

"""Request bodies of the OpenAI endpoints, with llama-cpp-python's server defaults.

Unknown fields are kept (extra="allow"): OpenAI clients send fields this server does not use,
and the position-scheme fields (`rope_scaling`, `rerope_window`, ... the CLI's scheme flags with
underscores) are read from them by scheme_request.py.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: float = 0.8
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict[str, bool]] = None
    seed: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    user: Optional[str] = None

    def sampling_kwargs(self) -> dict:
        """Keyword arguments of Llama.create_completion / create_chat_completion."""
        return {
            "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "min_p": self.min_p, "top_k": self.top_k, "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "stop": self.stop, "seed": self.seed,
            "logit_bias": {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
        }

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v):
        if v is not None:
            for k in v:
                if not k.lstrip("-").isdigit():
                    raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Request):
    prompt: Union[str, list[int], list[str]] = ""
    max_tokens: Optional[int] = Field(16, ge=0)
    suffix: Optional[str] = None
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    best_of: int = Field(1, ge=1, le=1, description="only one choice per request")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("one prompt per request (a list of one string, a string or token ids)")
            return v[0]
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[dict[str, object]]]] = ""

    def flat(self) -> dict:
        """The message for a chat template: content parts of type "text" joined into one string."""
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("messages: only text content parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=0)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = Field(None, ge=0)

    def sampling_kwargs(self) -> dict:
        out = super().sampling_kwargs()
        if out["max_tokens"] is None:
            out["max_tokens"] = self.max_completion_tokens
        return out


class TokenizeRequest(BaseModel):
    """llama.cpp server's /tokenize."""

    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    """llama.cpp server's /detokenize."""

    tokens: list[int]

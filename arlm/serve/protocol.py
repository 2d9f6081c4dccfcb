"""The OpenAI request bodies the server takes, checked, and their translation to SamplingParams.

Field names, types and ranges are OpenAI's (``/v1/completions``, ``/v1/chat/completions``), plus
arlm's extra controls under the names vLLM uses for them (``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``...). Types are strict (``"5"`` is not a number) and unknown
fields are refused, so a typo is a 400 naming the field rather than a silently ignored control.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from arlm.config import SamplingParams, ServeConfig
from arlm.errors import UserError

class ApiError(Exception):
    """An error response: HTTP status, OpenAI error type and code, message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}



class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``text``/``json_object``/``json_schema``, and arlm's ``regex`` (``{"type": "regex", "regex": RE}``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema", "regex"]
    json_schema: JSONSchemaFormat | None = None
    regex: str | None = None


class Common(BaseModel):
    """What both endpoints take."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # arlm's extra controls (vLLM's names)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    typical_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    min_tokens: int = Field(default=0, ge=0)
    bad_words: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    # accepted and ignored: OpenAI clients send them, they do not change what is generated
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(Common):
    prompt: Union[str, list[str], list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    continue_final_message: bool = False  # vLLM's: the last (assistant) message is continued, not answered


def message_text(m: Message) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for part in m.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise UserError("messages: only text content parts ({'type': 'text', 'text': ...}) are supported")
        parts.append(part["text"])
    return "".join(parts)


# Controls a model's generation_config.json may set (as `arlm generate` uses them) when a request does not.
MODEL_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size")


def sampling_params(req: Common, cfg: ServeConfig, max_tokens: int, top_logprobs: int, want_logprobs: bool,
                    extra_stop: list[str] = (), defaults: dict[str, Any] | None = None) -> SamplingParams:
    """The request as the engine's SamplingParams, within the server's limits (UserError otherwise).
    Controls the request leaves out come from the model's own ``defaults`` where it has them, as in
    ``arlm generate``, so a seeded request gives what the command line gives."""
    given = {k: getattr(req, k) for k in MODEL_DEFAULTS}
    for k, v in (defaults or {}).items():
        if k in given and k not in req.model_fields_set:
            given[k] = v
    if req.n > cfg.max_n:
        raise UserError(f"n must be at most {cfg.max_n} on this server, got {req.n}")
    if max_tokens > cfg.max_tokens:
        raise UserError(f"max_tokens must be at most {cfg.max_tokens} on this server, got {max_tokens}")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4:
        raise UserError(f"stop takes at most 4 sequences (as OpenAI's), got {len(stop)}")
    bias = []
    for key, value in (req.logit_bias or {}).items():
        if not key.isdigit():
            raise UserError(f"logit_bias keys are token ids (strings of digits), got {key!r}")
        bias.append(f"{key}={value}")
    json_schema, regex = "", ""
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        json_schema = json.dumps({"type": "object"})
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise UserError("response_format of type json_schema needs a json_schema: {'name': ..., 'schema': {...}}")
        json_schema = json.dumps(fmt.json_schema.schema_ or {"type": "object"})
    elif fmt is not None and fmt.type == "regex":
        if not fmt.regex:
            raise UserError("response_format of type regex needs a regex")
        regex = fmt.regex
    params = SamplingParams(
        max_new_tokens=max_tokens, **given, frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty, bad_words=list(req.bad_words), logit_bias=bias,
        min_new_tokens=req.min_tokens, logprobs=want_logprobs, top_logprobs=top_logprobs,
        num_return_sequences=req.n, stop=stop + [s for s in extra_stop if s not in stop],
        stop_token_ids=list(req.stop_token_ids), seed=req.seed, json_schema=json_schema, regex=regex,
        # the model's own forced first/last tokens (an encoder-decoder's generation_config.json); no request field
        **{k: v for k, v in (defaults or {}).items() if k in ("forced_bos_token_id", "forced_eos_token_id")})
    params.validate()
    return params

"""The OpenAI-compatible routes: completions and chat completions (whole or streamed as server-sent
events), models, tokenize and detokenize. Response shapes follow OpenAI's API reference."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from arlm.config import SamplingParams
from arlm.data.sft import encode_text
from arlm.errors import UserError
from arlm.generate.engine import Output
from arlm.generate.step import prompt_logprobs
from arlm.io.text import check_text
from arlm.serve.protocol import ApiError, ChatRequest, CompletionRequest, Message, message_text, sampling_params
from arlm.serve.runner import QueueFull

FINISH = {"stop": "stop", "length": "length", "time": "length"}  # OpenAI has no "time"
DISCONNECT_CHECK = 0.2  # seconds between checks that the client is still there


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


@dataclass
class Choice:
    """What one choice (sequence) has produced so far."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    last: float = 0.0  # when its last token came (inter-token latency)


def guard(server, request: Request, model: str | None) -> None:
    """The checks every API route makes first (the API key was checked before the body was read, by the gate of
    arlm/serve/gate.py): a loaded model, the model's name."""
    if server.load_error:
        raise ApiError(500, f"the model could not be loaded: {server.load_error}", "server_error")
    if server.runner is not None and server.runner.error is not None:  # nothing would answer a new request
        raise ApiError(500, "the engine stopped; see the server's log", "server_error")
    if not server.ready.is_set():
        raise ApiError(503, "the model is still loading; retry shortly", "server_error", headers={"Retry-After": "1"})
    if model is not None and model != server.model_name:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{server.model_name}'",
                       "invalid_request_error", "model_not_found", "model")


def register(app: FastAPI, server) -> None:
    """Add the routes to ``app``; ``server`` is the app's arlm.serve.app.Server."""

    @app.get("/v1/models")
    async def models(request: Request):
        guard(server, request, None)
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.started,
                                            "owned_by": "arlm", "max_model_len": server.lm.block_size}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        guard(server, request, body.model)
        if body.suffix:
            raise ApiError(400, "suffix is not supported (arlm's models generate left to right only)", param="suffix")
        if body.best_of not in (None, 1, body.n):
            raise ApiError(400, "best_of is not supported; use n", param="best_of")
        prompts = completion_prompts(server, body)
        params = sampling_params(body, server.cfg, 16 if body.max_tokens is None else body.max_tokens,
                                 body.logprobs or 0, body.logprobs is not None, defaults=server.lm.generation_defaults)
        if body.echo and server.lm.seq2seq:
            raise ApiError(400, "echo is not supported by an encoder-decoder (its prompt is the source, not the start "
                                "of its output)", param="echo")
        echo = await echo_prompts(server, prompts, body) if body.echo else None
        gen = Generation(server, request, prompts, params, "completions")
        await gen.start()
        if body.stream:
            return sse(completion_chunks(server, gen, body, echo))
        await gen.finish()
        return completion_body(server, gen, body, echo)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        guard(server, request, body.model)
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        ids = chat_prompt(server, body)
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = asked if asked is not None else max(16, min(server.cfg.max_tokens, server.lm.block_size - len(ids)))
        params = sampling_params(body, server.cfg, max_tokens, body.top_logprobs or 0, body.logprobs,
                                 server.template.stop, server.lm.generation_defaults)
        gen = Generation(server, request, [ids], params, "chat")
        await gen.start()
        if body.stream:
            return sse(chat_chunks(server, gen, body))
        await gen.finish()
        return chat_body(server, gen, body)

    register_tokenizer(app, server)


def register_tokenizer(app: FastAPI, server) -> None:
    """``POST /tokenize`` and ``POST /detokenize`` (vLLM's routes)."""

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        guard(server, request, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt (text) or messages (a conversation)")
        if body.prompt is not None:
            ids = encode(server, body.prompt)
        else:
            if server.template is None:
                raise UserError("messages need the model's tokenizer files")
            text = server.template.render(chat_messages(body.messages), add_generation_prompt=body.add_generation_prompt)
            ids = encode_text(server.lm.tokenizer, text, server.template.eos_token)
        return {"tokens": ids, "token_strs": [token_text(server, t) for t in ids], "count": len(ids),
                "max_model_len": server.lm.block_size}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        guard(server, request, body.model)
        V = server.lm.model.config.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < V]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{V - 1})", param="tokens")
        return {"prompt": server.lm.tokenizer.decode(body.tokens)}


def chat_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Request messages as the chat template takes them (OpenAI's "developer" is the system role)."""
    out = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m)} for m in messages]
    for m in out:
        check_text(m["content"], "a message")
    return out


# -- prompts ----------------------------------------------------------------------------------------------
def encode(server, text: str) -> list[int]:
    """A prompt's ids, refused (not cut) when longer than the server takes; "" starts a new document."""
    check_text(text, "the prompt")
    tok = server.lm.tokenizer
    ids = getattr(tok, "encode_prompt", tok.encode)(text) if text else []
    if not ids and server.lm.seq2seq:
        raise UserError("an encoder-decoder needs a source text to transform (the prompt); it is empty")
    if not ids:
        if tok.eot_id is None:
            raise UserError("empty prompt: this tokenizer has no end-of-text token to start from; give a prompt")
        ids = [tok.eot_id]
    return check_length(server, ids)


def check_length(server, ids: list[int]) -> list[int]:
    if server.lm.seq2seq:
        limit, what = server.lm.model.config.source_len, "the encoder's max_source_len"
        limit = min(limit, server.cfg.max_prompt_tokens or limit)
    else:
        limit, what = server.cfg.max_prompt_tokens or server.lm.block_size, "the model's context window"
    if len(ids) > limit:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; this server takes at most {limit} "
                            f"({what}); shorten it", code="context_length_exceeded")
    return ids


def completion_prompts(server, body: CompletionRequest) -> list[list[int]]:
    p = body.prompt
    if isinstance(p, str):
        return [encode(server, p)]
    if not p:
        raise UserError("prompt must not be an empty list")
    if all(isinstance(x, str) for x in p):
        if len(p) * body.n > server.cfg.max_batch:
            raise UserError(f"{len(p)} prompts x n={body.n} exceed the server's {server.cfg.max_batch} slots; send fewer")
        return [encode(server, x) for x in p]
    V = server.lm.model.config.vocab_size
    if not all(0 <= x < V for x in p):
        raise UserError(f"a prompt of token ids takes ids in 0..{V - 1}")
    return [check_length(server, list(p))]


def chat_prompt(server, body: ChatRequest) -> list[int]:
    if server.lm.seq2seq:
        raise UserError("this model is an encoder-decoder, which transforms one source text: send the source as the "
                        "prompt of /v1/completions")
    if server.template is None:
        raise UserError("chat needs the model's tokenizer files")
    msgs = chat_messages(body.messages)
    tmpl, tok = server.template, server.lm.tokenizer
    if body.continue_final_message:
        if msgs[-1]["role"] != "assistant":
            raise UserError("continue_final_message needs the last message to be the assistant's (the reply to continue)")
        head = tmpl.render(msgs[:-1], add_generation_prompt=True)
        ids = encode_text(tok, head, tmpl.eos_token) + (tok.encode(msgs[-1]["content"]) if msgs[-1]["content"] else [])
    else:
        ids = tmpl.prompt_ids(msgs)
    return check_length(server, ids)


async def echo_prompts(server, prompts: list[list[int]], body: CompletionRequest):
    """Each prompt's text and, with logprobs, its tokens' log-probabilities (on the engine's thread)."""
    out = []
    for ids in prompts:
        lps = None
        if body.logprobs is not None:
            fut = server.runner.call(lambda ids=ids: prompt_logprobs(server.lm.model, ids, body.logprobs or 0))
            lps = await asyncio.wrap_future(fut)
        out.append((ids, server.lm.tokenizer.decode(ids), lps))
    return out


def token_bytes(server, tid: int) -> bytes:
    """A token's own bytes (a byte-level BPE token may hold part of a character), read by llguidance
    (built when the model loads); its text's bytes for a tokenizer llguidance cannot read."""
    from arlm.generate.grammar import ll_tokenizer

    try:
        ll, _ = ll_tokenizer(server.lm.tokenizer, server.lm.model.config.vocab_size)
    except UserError:
        return server.lm.tokenizer.decode([tid]).encode("utf-8", "surrogatepass")
    return ll.decode_bytes([tid])


def token_text(server, tid: int) -> str:
    """A token as OpenAI shows it: its text, or ``bytes:\\xNN...`` when it is not whole characters."""
    if server.lm.tokenizer is None:
        return f"<{tid}>"
    raw = token_bytes(server, tid)
    try:
        return raw.decode("utf-8") if raw else server.lm.tokenizer.decode([tid])
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


# -- running requests ----------------------------------------------------------------------------------------
class Generation:
    """The engine requests of one HTTP call (a prompt each, n sequences each) and their outputs."""

    def __init__(self, server, request: Request, prompts: list[list[int]], params: SamplingParams, route: str):
        self.server, self.request, self.prompts, self.params, self.route = server, request, prompts, params, route
        self.n = params.num_return_sequences
        self.choices = [Choice() for _ in range(len(prompts) * self.n)]
        self.queue: asyncio.Queue = asyncio.Queue()
        self.rows: dict[str, int] = {}
        self.arrival = time.monotonic()
        self.first = False
        self.id = ("chatcmpl-" if route == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.done = False
        self.error: str | None = None  # a request of it failed while decoding (its output format)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    async def start(self) -> None:
        """Submit every prompt; a refused one (bad request, full queue) aborts the others and raises."""
        loop = asyncio.get_running_loop()
        runner = self.server.runner
        subs = []
        try:
            for i, ids in enumerate(self.prompts):
                subs.append((i, runner.submit(ids, self.params, loop, self.queue)))
            for i, sub in subs:
                self.rows[await asyncio.wrap_future(sub.done)] = i * self.n
        except BaseException as e:
            for _, sub in subs:  # those already submitted, also those whose id arrives later
                sub.done.add_done_callback(lambda f: f.exception() is None and self.server.runner.abort(f.result()))
            self.done = True  # nothing of it runs; a refusal is not a disconnect or a failure
            if isinstance(e, QueueFull):
                self.server.metrics.rejected.inc()
                raise ApiError(429, "the server is busy (its queue is full); retry shortly", "rate_limit_error",
                               headers={"Retry-After": "1"}) from None
            raise
        self.server.metrics.prompt.inc(self.prompt_tokens)

    def abort(self, reason: str = "disconnect") -> None:
        """Stop every engine request of this call, counted by why: the client left ("disconnect":
        arlm_requests_aborted), one of them failed ("error": arlm_requests{status="error"}), or the queue
        refused one ("rejected": arlm_requests_rejected, counted where it is refused)."""
        if not self.done:
            for rid in self.rows:
                self.server.runner.abort(rid)
            if reason == "disconnect":
                self.server.metrics.aborted.inc()
            elif reason == "error":
                self.server.metrics.requests.labels(self.route, "error").inc()
            self.done = True

    async def events(self) -> AsyncIterator[list[tuple[int, Output]]]:
        """Each batch of outputs as (choice index, output) until every choice has finished."""
        checked = time.monotonic()
        reason = "disconnect"  # what ends it early unless the engine fails: the client leaving (cancelled here)
        try:
            while not all(c.finish_reason for c in self.choices):
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=DISCONNECT_CHECK)
                except asyncio.TimeoutError:
                    item = None
                if time.monotonic() - checked >= DISCONNECT_CHECK:  # a client that left stops being decoded
                    checked = time.monotonic()
                    if await self.request.is_disconnected():
                        self.abort()
                        return
                if item is None:
                    continue
                if isinstance(item, BaseException):
                    reason = "error"
                    raise item
                yield [self._record(self.rows[o.request_id] + o.index, o) for o in item]
            self.done = True
            self.server.metrics.requests.labels(self.route, "error" if self.error else "ok").inc()
        finally:
            self.abort(reason)  # a client gone mid-stream (the task is cancelled here) or an error: free the slots

    def _record(self, k: int, out: Output) -> tuple[int, Output]:
        c, now, m = self.choices[k], time.monotonic(), self.server.metrics
        if out.token is not None and not out.eos:
            if not self.first:
                m.ttft.observe(now - self.arrival)
                self.first = True
            elif c.last:
                m.itl.observe(now - c.last)
            c.last = now
            c.tokens.append(out.token)
            m.generated.inc()
            if out.logprob is not None:
                c.logprobs.append(out.logprob)
                c.top.append(out.top)
        c.text += out.text
        if out.error:
            self.error = out.error
        if out.finish_reason:
            c.finish_reason = FINISH.get(out.finish_reason, out.finish_reason)
        return k, out

    def error_chunk(self) -> dict[str, Any]:
        """How a stream reports a request that failed after it started (then ``[DONE]``)."""
        return {"error": {"message": self.error, "type": "invalid_request_error", "param": "response_format",
                          "code": None}}

    async def finish(self) -> None:
        async for _ in self.events():
            pass
        if not all(c.finish_reason for c in self.choices):
            raise asyncio.CancelledError  # the client left; nobody reads a response
        if self.error:
            raise ApiError(400, self.error, param="response_format")


def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- completions shapes ----------------------------------------------------------------------------------------
def completion_logprobs(server, tokens, logprobs, tops, offset: int = 0) -> dict[str, Any]:
    texts = [token_text(server, t) for t in tokens]
    offsets, pos = [], offset
    for t in texts:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": texts, "token_logprobs": list(logprobs),
            "top_logprobs": [({token_text(server, i): v for i, v in top} if top is not None else None) for top in tops],
            "text_offset": offsets}


def completion_body(server, gen: Generation, body: CompletionRequest, echo) -> dict[str, Any]:
    choices = []
    for k, c in enumerate(gen.choices):
        prompt_text = echo[k // gen.n][1] if echo else ""
        lp = None
        if body.logprobs is not None:
            lp = completion_logprobs(server, c.tokens, c.logprobs, c.top, len(prompt_text))
            if echo:
                ids, _, plp = echo[k // gen.n]
                head = completion_logprobs(server, ids, [v for v, _ in plp], [t if i else None for i, (_, t) in enumerate(plp)])
                lp = {key: head[key] + lp[key] for key in lp}
        choices.append({"index": k, "text": prompt_text + c.text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {"id": gen.id, "object": "text_completion", "created": gen.created, "model": server.model_name,
            "choices": choices, "usage": gen.usage()}


async def completion_chunks(server, gen: Generation, body: CompletionRequest, echo) -> AsyncIterator[dict]:
    def choice(k: int, out: Output) -> dict[str, Any] | None:
        lp = None
        if body.logprobs is not None and out.logprob is not None:
            lp = completion_logprobs(server, [out.token], [out.logprob], [out.top])
        if not (out.text or lp or out.finish_reason):
            return None
        return {"index": k, "text": out.text, "logprobs": lp,
                "finish_reason": gen.choices[k].finish_reason if out.finish_reason else None}

    first = [{"index": k, "text": echo[k // gen.n][1], "logprobs": None, "finish_reason": None}
             for k in range(len(gen.choices))] if echo else []
    async for chunk in stream_chunks(server, gen, body, "text_completion", first, choice):
        yield chunk


async def stream_chunks(server, gen: Generation, body, kind: str, first: list[dict],
                        choice) -> AsyncIterator[dict]:
    """A stream's chunks (object ``kind``): ``first`` (choices sent before any token, if any), then a
    chunk per batch of outputs, ``choice(k, output)`` each (None: nothing to send for it); a request
    that fails ends the stream with an error event; with ``stream_options.include_usage`` every chunk
    has ``usage: null`` and a last one, with no choices, the usage."""
    usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(choices: list[dict]) -> dict[str, Any]:
        out = {"id": gen.id, "object": kind, "created": gen.created, "model": server.model_name, "choices": choices}
        if usage:
            out["usage"] = None
        return out

    if first:
        yield chunk(first)
    async for batch in gen.events():
        if gen.error:
            yield gen.error_chunk()
            gen.abort("error")
            return
        choices = [c for c in (choice(k, out) for k, out in batch) if c is not None]
        if choices:
            yield chunk(choices)
    if usage:
        yield {**chunk([]), "usage": gen.usage()}


# -- chat shapes --------------------------------------------------------------------------------------------
def chat_logprob_entry(server, tid: int, logprob: float, top) -> dict[str, Any]:
    return {"token": token_text(server, tid), "logprob": logprob, "bytes": list(token_bytes(server, tid)),
            "top_logprobs": [{"token": token_text(server, i), "logprob": v, "bytes": list(token_bytes(server, i))}
                             for i, v in top]}


def chat_body(server, gen: Generation, body: ChatRequest) -> dict[str, Any]:
    choices = []
    for k, c in enumerate(gen.choices):
        lp = None
        if body.logprobs:
            lp = {"content": [chat_logprob_entry(server, t, v, top) for t, v, top in zip(c.tokens, c.logprobs, c.top)]}
        choices.append({"index": k, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                        "finish_reason": c.finish_reason})
    return {"id": gen.id, "object": "chat.completion", "created": gen.created, "model": server.model_name,
            "choices": choices, "usage": gen.usage()}


async def chat_chunks(server, gen: Generation, body: ChatRequest) -> AsyncIterator[dict]:
    def choice(k: int, out: Output) -> dict[str, Any] | None:
        lp = None
        if body.logprobs and out.logprob is not None:
            lp = {"content": [chat_logprob_entry(server, out.token, out.logprob, out.top)]}
        if not (out.text or lp or out.finish_reason):
            return None
        return {"index": k, "delta": {"content": out.text} if out.text or lp else {}, "logprobs": lp,
                "finish_reason": gen.choices[k].finish_reason if out.finish_reason else None}

    first = [{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
             for k in range(len(gen.choices))]
    async for chunk in stream_chunks(server, gen, body, "chat.completion.chunk", first, choice):
        yield chunk

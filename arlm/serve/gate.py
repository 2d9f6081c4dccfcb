"""What every request passes before a route sees it, as ASGI middleware: the API key, the body's size,
and the body's text.

The order is OpenAI's: a client without the key gets 401 before its body is read, so it learns nothing
about the request it sent (not even whether it was valid). Then the body is read whole, up to
``--max-body-kb``: over it, by Content-Length or while reading a chunked body, is 413. A POST body
must not be empty, must be JSON, and every string in it (keys included) must be valid Unicode, the text policy of
every other way into arlm (arlm/io/text.py): a lone surrogate from a ``\\ud800`` escape is a 400 naming
the field, whatever the field (prompt, stop, bad_words, a schema, the model's name). A body that is
JSON but was sent without a JSON content type (``curl -d``) is read as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.responses import JSONResponse

from arlm.errors import UserError
from arlm.io.text import check_text
from arlm.serve.protocol import error_body

API_PATHS = ("/v1/", "/tokenize", "/detokenize")  # what the API key guards; /health, /metrics and the page stay open
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _field(path: list[Any]) -> str:
    """A field's place in the body as OpenAI's ``param`` writes it (``messages[0].content``), at most 120 characters."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return (out[:117] + "..." if len(out) > 120 else out) or "the body"


class BodyTextError(UserError):
    """A string of the body is not valid Unicode; ``field`` names it (OpenAI's ``param``)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def check_body_text(value: Any) -> None:
    """Every string in a JSON value, keys included, is valid Unicode; a BodyTextError names the first field that
    is not. Iterative: a body nested as deep as the JSON parser allows does not exhaust the stack here."""
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        try:
            if isinstance(node, str):
                check_text(node, f"'{_field(path)}'")
            elif isinstance(node, dict):
                for k in node:
                    check_text(k, f"a key of '{_field(path)}'")
        except UserError as e:
            raise BodyTextError(str(e), _field(path)) from None
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((v, path + [k]) for k, v in reversed(list(items)) if isinstance(v, (str, list, dict)))


class RequestGate:
    """ASGI middleware: the API key (401), the body limit (413), empty or invalid text (400)."""

    def __init__(self, app, limit: int, api_key: str = ""):
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith(API_PATHS) and \
                headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
            return await self._answer(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                      code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(send)
        body = await self._read(receive)
        if body is None:  # the client left while sending
            return
        if body is _TOO_LARGE:
            return await self._too_large(send)
        if scope["method"] == "POST":
            problem = self._check(body, scope)
            if problem:
                return await self._answer(send, 400, *problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, which streaming responses watch for

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None | object:
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return _TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check(self, body: bytes, scope) -> tuple[str, None, str | None] | None:
        """Why a POST body is refused before validation, and the field (None: on to the route's own checks)."""
        if not body.strip():
            return ("the request body is empty; send a JSON object (see the OpenAI API reference for this route's "
                    "fields)", None, None)
        try:
            value = json.loads(body)
        except RecursionError:
            return "the request body is not valid JSON (nested too deeply); send a JSON object", None, None
        except ValueError as e:  # also bytes that are not UTF-8
            return f"the request body is not valid JSON ({str(e)[:120]}); send a JSON object", None, None
        try:
            if SURROGATE_ESCAPE.search(body):  # only a \uD800-\uDFFF escape can make one (UTF-8 bytes cannot)
                check_body_text(value)
        except BodyTextError as e:
            return str(e), None, e.field
        headers = scope["headers"]
        if not any(k == b"content-type" and b"json" in v for k, v in headers):
            scope["headers"] = [(k, v) for k, v in headers if k != b"content-type"] + \
                               [(b"content-type", b"application/json")]
        return None

    async def _too_large(self, send):
        await self._answer(send, 413, f"request body too large (the limit is {self.limit // 1024} KiB)")

    @staticmethod
    async def _answer(send, status: int, message: str, code: str | None = None, param: str | None = None):
        response = JSONResponse(error_body(message, code=code, param=param), status_code=status)
        await response({"type": "http"}, None, send)


_TOO_LARGE = object()


def http_protocol():
    """uvicorn's HTTP/1.1 protocol (h11) answering a request that is not valid HTTP (a malformed request line,
    header or chunked body, which never reaches the app) in OpenAI's error shape too, where uvicorn sends plain
    text; uvicorn's own choice where its h11 protocol is not what this expects."""
    try:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol
    except ImportError:
        return "auto"
    if not hasattr(H11Protocol, "send_400_response"):
        return "auto"

    class Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(error_body("the request is not valid HTTP/1.1 (a malformed request line, header, "
                                         "Content-Length or chunked body); send a well-formed request")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol

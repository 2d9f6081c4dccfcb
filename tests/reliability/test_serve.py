"""`arlm serve` under hostile HTTP, raw: every refusal a 4xx in OpenAI's error shape with one line and no trace,
the server serving afterwards. The gate before the routes (arlm/serve/gate.py): the API key first (401 before the
body is read), the body limit (413 by Content-Length and while a chunked body arrives), the text policy on every
string of the body (a lone surrogate names its field, whatever the field). The queue counts only requests that
wait for a slot; refusals and disconnects are counted apart (/metrics)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from tests.serve.conftest import bpe_lm, bpe_model, running  # noqa: F401 (fixtures)

PROMPT = {"model": "tiny", "prompt": "To be", "max_tokens": 3}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}


def raw(url: str, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={"content-type": "application/json", **(headers or {})},
                      timeout=60)


def error(r: httpx.Response, status: int, pattern: str = "", param: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert "\n" not in err["message"] and "Traceback" not in r.text, err
    assert not pattern or pattern in err["message"], err["message"]
    assert param == "any" or err["param"] == param, err
    return err


def serving(url: str) -> None:
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    assert httpx.post(url + "/v1/completions", json=PROMPT, timeout=60).status_code == 200


def metric(url: str, name: str) -> float:
    line = next(ln for ln in httpx.get(url + "/metrics").text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


@pytest.fixture(scope="module")
def server(bpe_lm):  # noqa: F811
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    with running(create_app(ServeConfig(model_name="tiny", max_batch=8, max_body_kb=64), lm=bpe_lm)) as url:
        yield url


@pytest.mark.parametrize("path, body, field", [
    ("/v1/completions", {**PROMPT, "bad_words": ["\ud800"]}, "bad_words[0]"),  # was a 500
    ("/v1/completions", {**PROMPT, "stop": ["ok", "a\udfff"]}, "stop[1]"),  # was accepted
    ("/v1/completions", {**PROMPT, "stop": "\ud800"}, "stop"),
    ("/v1/completions", {**PROMPT, "prompt": ["fine", "\ud800"]}, "prompt[1]"),
    ("/v1/completions", {**PROMPT, "model": "\ud800"}, "model"),
    ("/v1/completions", {**PROMPT, "user": "\udc80"}, "user"),
    ("/v1/completions", {**PROMPT, "logit_bias": {"\ud800": 1}}, "logit_bias"),
    ("/v1/completions", {**PROMPT, "metadata": {"k": "\ud800"}}, "metadata.k"),
    ("/v1/completions", {**PROMPT, "response_format": {"type": "regex", "regex": "a\ud800"}}, "response_format.regex"),
    ("/v1/completions", {**PROMPT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["\ud800"]}}}}, "response_format.json_schema.schema.enum[0]"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages[0].content[0].text"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "hi", "name": "\ud800"}]},
     "messages[0].name"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
])
def test_one_text_policy_for_every_field(server, path, body, field):
    r = raw(server, path, json.dumps(body).encode())  # json.dumps writes the escape, as a client would
    error(r, 400, "is not valid Unicode: U+D", param=field)
    serving(server)


@pytest.mark.parametrize("body, pattern", [
    (b"", "the request body is empty; send a JSON object"),  # was "missing required field 'None'"
    (b"  \n", "the request body is empty"),
    (b"{}", "missing required field 'model'"),
    (b"null", "must be a JSON object"),
    (b'{"model": "tiny", "prompt": "a", "max_tokens": 1', "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[" * 30_000, "not valid JSON"),
])
def test_malformed_bodies_are_named(server, body, pattern):
    error(raw(server, "/v1/completions", body), 400, pattern)
    serving(server)


def test_a_schema_that_accepts_nothing_is_named_as_such(server):
    for schema in ({"$ref": "#"}, {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}):
        fmt = {"type": "json_schema", "json_schema": {"name": "loop", "schema": schema}}
        error(raw(server, "/v1/completions", json.dumps({**PROMPT, "response_format": fmt}).encode()), 400,
              "the output format accepts no text at all")
    serving(server)


def test_json_sent_without_its_content_type_is_read_as_json(server):
    r = httpx.post(server + "/v1/completions", content=json.dumps(PROMPT).encode(),
                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=60)  # what curl -d sends
    assert r.status_code == 200, r.text


def test_bodies_over_the_limit_get_413_however_they_arrive(server):
    big = json.dumps({**PROMPT, "prompt": "x" * (80 << 10)}).encode()

    def chunks():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    error(httpx.post(server + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                     timeout=60), 413, "too large (the limit is 64 KiB)")  # chunked: was a 400 parse error
    error(raw(server, "/v1/completions", big), 413, "too large")
    serving(server)


def test_the_api_key_is_checked_before_the_body(bpe_lm):  # noqa: F811
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    with running(create_app(ServeConfig(model_name="tiny", api_key="k3y", max_body_kb=1), lm=bpe_lm)) as url:
        for body in (b"{broken", b"", json.dumps({**PROMPT, "stop": "\ud800"}).encode(), b"x" * 4096):
            err = error(raw(url, "/v1/completions", body), 401, "API key")  # as OpenAI: the key first
            assert err["code"] == "invalid_api_key"
        key = {"authorization": "Bearer k3y"}
        error(raw(url, "/v1/completions", b"{broken", key), 400, "not valid JSON")
        error(raw(url, "/v1/completions", b"x" * 4096, key), 413)
        assert httpx.post(url + "/v1/completions", json=PROMPT, headers=key, timeout=60).status_code == 200
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/metrics").status_code == 200


def _burst(url: str, n: int, body: dict) -> list[int]:
    codes: list[int] = []
    start = threading.Barrier(n)

    def one():
        start.wait()
        codes.append(httpx.post(url + "/v1/completions", json=body, timeout=120).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(codes)


def test_only_requests_that_wait_count_against_the_queue(bpe_lm):  # noqa: F811
    """4 slots, max_queue 1: a burst of 5 is taken whole, however fast it comes (4 start, 1 waits; requests not yet
    handed to the engine counted as waiting, so a burst of 3 got 429 with 4 slots free); with every slot busy and
    one waiting, the next is refused, and counted as rejected, not as a client that left."""
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    cfg = ServeConfig(model_name="tiny", max_batch=4, max_n=4, max_queue=1)
    with running(create_app(cfg, lm=bpe_lm)) as url:
        assert _burst(url, 5, PROMPT) == [200] * 5
        long = {**PROMPT, "max_tokens": 4000, "min_tokens": 4000}

        def hold():  # until the read times out: the server then aborts it as a client that left
            with contextlib.suppress(httpx.ReadTimeout):
                httpx.post(url + "/v1/completions", json=long, timeout=httpx.Timeout(60, read=3))

        holders = [threading.Thread(target=hold) for _ in range(5)]
        for t in holders:
            t.start()
        deadline = time.monotonic() + 30
        while (lambda h: (h["running"], h["waiting"]))(httpx.get(url + "/health").json()) != (4, 1):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        error(httpx.post(url + "/v1/completions", json=PROMPT, timeout=60), 429, "busy")
        assert metric(url, "arlm_requests_rejected_total") == 1
        assert metric(url, "arlm_requests_aborted_total") == 0  # a refusal is not a disconnect
        for t in holders:
            t.join()
        serving(url)


def test_a_client_that_leaves_is_counted_as_such(server):
    before = metric(server, "arlm_requests_aborted_total"), metric(server, "arlm_requests_rejected_total")
    body = json.dumps({**PROMPT, "max_tokens": 4000, "min_tokens": 4000, "stream": True}).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 30
    while metric(server, "arlm_requests_aborted_total") == before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "arlm_requests_aborted_total") == before[0] + 1
    assert metric(server, "arlm_requests_rejected_total") == before[1]
    serving(server)


def test_a_client_that_leaves_while_sending_costs_nothing(server):
    host, port = server.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"model\": ")
    serving(server)


def test_concurrent_clients_with_good_and_bad_requests(server):
    bodies = [PROMPT, {**PROMPT, "stop": "\ud800"}, {**PROMPT, "temperature": -1}, CHAT, b"", {**PROMPT, "n": 3}] * 4
    results: list[tuple[int, bytes]] = []

    def one(body):
        if isinstance(body, dict):
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            body = json.dumps(body).encode()
        else:
            path = "/v1/completions"
        r = raw(server, path, body)
        results.append((r.status_code, body))

    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c for c, _ in results) == sorted([200, 400, 400, 200, 400, 200] * 4)
    serving(server)


@pytest.mark.parametrize("method, path, status, pattern", [
    ("GET", "/nope", 404, "no route GET /nope; the OpenAI API is at /v1/completions"),
    ("GET", "/v1/%ED%A0%80", 404, "no route GET /v1/"),  # a path that decodes to a lone surrogate
    ("GET", "/v1/completions", 405, "GET /v1/completions is not allowed"),
    ("DELETE", "/v1/models", 405, "is not allowed"),
])
def test_routes_that_do_not_exist(server, method, path, status, pattern):
    error(httpx.request(method, server + path, timeout=30), status, pattern)


NOT_HTTP = [
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(100)),  # a TLS hello to the plain-HTTP port
]


def test_requests_that_are_not_http_get_json_too(bpe_lm):  # noqa: F811
    """What never reaches the app (uvicorn's h11 refuses it) is answered in OpenAI's shape, not as plain text."""
    import uvicorn

    from arlm.config import ServeConfig
    from arlm.serve.app import create_app
    from arlm.serve.gate import http_protocol

    sock = socket.create_server(("127.0.0.1", 0))
    app = create_app(ServeConfig(model_name="tiny"), lm=bpe_lm)
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", http=http_protocol()))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        for request_bytes in NOT_HTTP:
            with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=30) as s:
                s.sendall(request_bytes)
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, head
            assert json.loads(body)["error"]["message"].startswith("the request is not valid HTTP/1.1")
            serving(url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_body_nested_as_deep_as_json_allows(server):
    """The text check walks the body without recursion: a body nested as deep as the JSON parser takes gets the
    route's validation error, not a 500 from an exhausted stack."""
    deep = b'{"model": "tiny", "prompt": ' + b"[" * 950 + b'"\\ud800"' + b"]" * 950 + b"}"
    error(raw(server, "/v1/completions", deep), 400, "is not valid Unicode", param=("prompt" + "[0]" * 950)[:117] + "...")
    serving(server)

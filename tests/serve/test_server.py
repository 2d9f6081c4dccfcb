"""The server's HTTP behaviour: errors as OpenAI JSON with 4xx codes and no traces, limits, the API key,
/health while loading, /metrics, /tokenize and /detokenize, cancelling on disconnect, 429 when full."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.serve.conftest import running

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def post(url, path, body=None, **kw):
    return httpx.post(url + path, json=body, **{"timeout": 30, **kw})


def assert_error(r, status, *words):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "\n" not in err["message"] and "Traceback" not in r.text and 'File "' not in r.text
    for w in words:
        assert w in err["message"], err["message"]
    return err


@pytest.mark.parametrize("body, status, words", [
    ({**CHAT, "temperature": "hot"}, 400, ["temperature"]),
    ({**CHAT, "max_tokens": -1}, 400, ["max_tokens"]),
    ({**CHAT, "max_tokens": 10 ** 9}, 400, ["max_tokens", "at most"]),
    ({**CHAT, "n": 100}, 400, ["n must be at most"]),
    ({**CHAT, "top_p": 0}, 400, ["top_p"]),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, ["at most 4"]),
    ({**CHAT, "logit_bias": {"abc": 1}}, 400, ["logit_bias"]),
    ({**CHAT, "logit_bias": {"999999": 1}}, 400, ["outside the vocabulary"]),
    ({**CHAT, "temprature": 1}, 400, ["unknown field", "temprature"]),
    ({**CHAT, "messages": []}, 400, ["messages"]),
    ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, ["role"]),
    ({**CHAT, "model": "nope"}, 404, ["does not exist"]),
    ({"messages": CHAT["messages"]}, 400, ["missing", "model"]),
    ({**CHAT, "response_format": {"type": "regex", "regex": "(a"}}, 400, ["regex cannot be used"]),
    ({**CHAT, "seed": 1.5}, 400, ["seed"]),
])
def test_bad_chat_requests_get_openai_errors(server, body, status, words):
    assert_error(post(server, "/v1/chat/completions", body), status, *words)


LONE_SURROGATE = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'


@pytest.mark.parametrize("raw, status", [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b'"text"', 400),
                                         (b"\xff\xfe", 400), (LONE_SURROGATE, 400), (b'{"model": "tiny"}', 400)])
def test_malformed_bodies(server, raw, status):
    r = httpx.post(server + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert_error(r, status)


def test_bodies_over_the_limit_are_refused(server):
    big = {"model": "tiny", "prompt": "x" * (2 << 20), "max_tokens": 1}
    assert_error(post(server, "/v1/completions", big), 413, "too large")


def test_completion_prompt_forms(server):
    ok = post(server, "/v1/completions", {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 3, "n": 2, "seed": 1})
    assert [c["index"] for c in ok.json()["choices"]] == [0, 1, 2, 3]
    ids = post(server, "/tokenize", {"prompt": "To be"}).json()["tokens"]
    same = post(server, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 5, "seed": 2}).json()
    text = post(server, "/v1/completions", {"model": "tiny", "prompt": "To be", "max_tokens": 5, "seed": 2}).json()
    assert same["choices"][0]["text"] == text["choices"][0]["text"]
    assert_error(post(server, "/v1/completions", {"model": "tiny", "prompt": [10 ** 6], "max_tokens": 1}), 400, "token ids")
    assert_error(post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y"}), 400, "suffix")


def test_tokenize_detokenize_round_trip(server):
    text = "Whether 'tis nobler in the mind to suffer"
    r = post(server, "/tokenize", {"prompt": text}).json()
    assert r["count"] == len(r["tokens"]) > 3 and r["max_model_len"] == 128
    assert post(server, "/detokenize", {"tokens": r["tokens"]}).json()["prompt"] == text
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 1
    assert_error(post(server, "/detokenize", {"tokens": [-1]}), 400, "outside the vocabulary")
    assert_error(post(server, "/tokenize", {"messages": [{"role": "robot", "content": "x"}]}), 400, "role")
    assert_error(post(server, "/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}), 400,
                 "either prompt")
    assert_error(post(server, "/tokenize", {"prompt": 5}), 400, "prompt")


def test_metrics_report_the_serving_figures(server):
    post(server, "/v1/chat/completions", CHAT)
    text = httpx.get(server + "/metrics").text
    for name in ("arlm_requests_running", "arlm_requests_waiting", "arlm_generated_tokens_total",
                 "arlm_time_to_first_token_seconds_bucket", "arlm_inter_token_latency_seconds_bucket",
                 "arlm_kv_slots_in_use", "arlm_prefix_cache_hits"):
        assert name in text
    generated = [ln for ln in text.splitlines() if ln.startswith("arlm_generated_tokens_total")]
    assert float(generated[0].split()[-1]) >= 4


def test_the_page_is_served(server):
    r = httpx.get(server + "/")
    assert r.status_code == 200 and "<title>arlm</title>" in r.text
    assert httpx.get(server + "/static/app.js").status_code == 200


def test_api_key_guards_every_v1_route(bpe_lm):
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    with running(create_app(ServeConfig(model_name="tiny", api_key="s3cret"), lm=bpe_lm)) as url:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": "tiny", "prompt": "x"})):
            assert_error(post(url, path, body), 401, "API key")
            assert_error(post(url, path, body, headers={"Authorization": "Bearer wrong"}), 401)
            assert post(url, path, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # health and the page stay open


def test_health_is_503_while_the_model_loads(bpe_model, monkeypatch):
    import arlm.api
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    release = threading.Event()
    real = arlm.api.load
    monkeypatch.setattr(arlm.api, "load", lambda *a, **k: (release.wait(30), real(*a, **k))[1])
    app = create_app(ServeConfig(model_name="tiny"), model_path=str(bpe_model), load_options=dict(device="cpu"))
    import uvicorn  # noqa: F401  (running() waits for 200 or 500; here it must see 503 first)
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        for _ in range(200):
            try:
                r = httpx.get(url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
        assert_error(post(url, "/v1/chat/completions", CHAT), 503, "loading")
        release.set()
        for _ in range(200):
            if httpx.get(url + "/health").status_code == 200:
                break
            time.sleep(0.05)
        assert post(url, "/v1/chat/completions", CHAT).status_code == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)


def running_count(url) -> int:
    return httpx.get(url + "/health").json()["running"]


def test_a_disconnected_stream_is_cancelled(server):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4000, "min_tokens": 4000, "stream": True, "seed": 1}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert running_count(server) == 1
    for _ in range(100):  # closed: aborted at the next step
        if running_count(server) == 0:
            break
        time.sleep(0.05)
    assert running_count(server) == 0


def test_a_disconnected_plain_request_is_cancelled(server):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4000, "min_tokens": 4000, "seed": 1}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/completions", body, timeout=httpx.Timeout(30, read=0.5))
    for _ in range(100):
        if running_count(server) == 0:
            break
        time.sleep(0.05)
    assert running_count(server) == 0


def test_a_full_queue_answers_429_with_retry_after(bpe_lm):
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    cfg = ServeConfig(model_name="tiny", max_batch=1, max_n=1, max_queue=2)
    with running(create_app(cfg, lm=bpe_lm)) as url:
        long = {"model": "tiny", "prompt": "x", "max_tokens": 800, "min_tokens": 800}
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(post(url, "/v1/completions", long).status_code))
                   for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        r = post(url, "/v1/completions", long)
        assert_error(r, 429, "busy")
        assert r.headers["retry-after"] == "1"
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 200, 200]
        assert post(url, "/v1/completions", {**long, "max_tokens": 2, "min_tokens": 0}).status_code == 200


def test_a_grammar_past_the_limits_fails_its_request_not_the_server(server):
    """A regular expression llguidance gives up on once decoding starts: a 400 for a plain request,
    an error event in a stream; the server keeps serving."""
    fmt = {"type": "regex", "regex": "(a{1000}){1000}"}
    body = {"model": "tiny", "prompt": "x", "max_tokens": 5, "response_format": fmt}
    assert_error(post(server, "/v1/completions", body), 400, "could not be followed")
    with httpx.stream("POST", server + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and "could not be followed" in events[-2]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    assert post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 3}).status_code == 200


FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
          "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "echo", "stream", "stream_options",
          "response_format", "top_k", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size", "min_tokens",
          "bad_words", "stop_token_ids", "max_completion_tokens", "continue_final_message", "user", "best_of", "suffix"]
HOSTILE = [None, -1, 0, 2 ** 63, 1e308, float("nan"), "x", "", "\u0000", [], [2 ** 40], ["a"], {}, {"1": 1e9}, True,
           {"type": "json_schema"}, {"type": "regex"}, [{"role": "user", "content": "x"}]]


@pytest.mark.parametrize("path, base", [("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 4}),
                                        ("/v1/chat/completions", CHAT)])
def test_every_field_with_hostile_values_gets_a_4xx_or_an_answer(server, path, base):
    """Each request field set to each of 18 hostile values (wrong types, extremes, NaN, empty, nested):
    never a 5xx or a trace, errors in OpenAI's shape, and the server healthy after all of them."""
    import json

    client = httpx.Client(base_url=server, timeout=60)
    for field in FIELDS:
        for value in HOSTILE:
            body = json.dumps({**base, field: value})  # NaN as JSON's common extension, as clients send it
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code < 500 and "Traceback" not in r.text, (field, value, r.status_code, r.text[:200])
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, (field, value)
    assert httpx.get(server + "/health").json()["status"] == "ok"

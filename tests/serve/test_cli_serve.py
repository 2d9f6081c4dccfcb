"""`arlm serve` refuses bad flags, a missing or broken model and a busy port with one line and exit
status 2, before listening; and it starts as the README says."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from tests.serve.conftest import serve_process


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arlm", "serve", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["--port", "99999"], "port must be between 0 and 65535"),
    (["--max-batch", "0"], "max_batch must be >= 1"),
    (["--max-n", "32", "--max-batch", "4"], "max_n (32) cannot exceed max_batch (4)"),
    (["--max-queue", "-1"], "max_queue must be >= 1"),
    (["--port", "eight"], "--port"),
])
def test_bad_flags(bpe_model, args, words):
    r = serve("--model", str(bpe_model), *args)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_a_missing_or_broken_model_is_refused_before_listening(tmp_path):
    r = serve("--model", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    r = serve("--model", str(tmp_path / "broken"))
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr


def test_a_busy_port_is_refused(bpe_model):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = serve("--model", str(bpe_model), "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_serve_starts_with_the_readme_command_and_a_key(bpe_model, monkeypatch):
    monkeypatch.setenv("ARLM_API_KEY", "k3y")
    with serve_process("--model", str(bpe_model)) as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"})
        assert r.json()["data"][0]["id"] == bpe_model.name

"""A random GPT over a byte-level BPE (it can spell any text, JSON and HTML included) and servers for it:
in this process (uvicorn on a thread, a free port) or as `arlm serve` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import CORPUS


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory) -> Path:
    from arlm.config import GPTConfig
    from arlm.interop.load import save_model
    from arlm.model.gpt import GPT
    from arlm.tokenizers import BPETokenizer

    tok = BPETokenizer.train([(CORPUS / "hamlet.txt").read_text(encoding="utf-8")[:60_000]], vocab_size=400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    path = tmp_path_factory.mktemp("models") / "tiny-bpe"
    save_model(path, model.eval(), tok)
    return path


@pytest.fixture(scope="session")
def bpe_lm(bpe_model):
    from arlm.api import load

    return load(bpe_model, device="cpu")


@contextlib.contextmanager
def running(app):
    """Serve ``app`` on a free local port until the block ends; yields the base URL once /health is 200."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=5).status_code in (200, 500):
                break
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(bpe_lm):
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    with running(create_app(ServeConfig(model_name="tiny", max_batch=16), lm=bpe_lm)) as url:
        yield url


@contextlib.contextmanager
def serve_process(*args: str):
    """`arlm serve ... --port 0` in a subprocess; yields (base URL, Popen) once it answers /health with 200."""
    proc = subprocess.Popen([sys.executable, "-m", "arlm", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://[^/\s]+)/", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = match.group(1)
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()

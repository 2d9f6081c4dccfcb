"""``arlm serve``: an OpenAI-compatible HTTP server over the decoding engine, and the web page at ``/``.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``
(503 while the model loads), ``GET /metrics`` (Prometheus), ``POST /tokenize``, ``POST /detokenize``,
and the page (``GET /``, arlm/serve/static). Requests decode together on one engine
(arlm/serve/runner.py); a client that disconnects has its request aborted at the next step; when
``max_queue`` requests already wait, new ones get 429 with ``Retry-After``. Before a route, every request
passes the gate (arlm/serve/gate.py): the API key, the body limit, the text policy. Every error is an
OpenAI-style JSON body with a 4xx code (5xx only for the server's own failures, never with a trace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from arlm.config import EngineConfig, ServeConfig
from arlm.errors import UserError
from arlm.generate.grammar import ll_tokenizer
from arlm.serve import openai_routes
from arlm.serve.gate import RequestGate
from arlm.serve.metrics import Metrics
from arlm.serve.protocol import ApiError, error_body
from arlm.serve.runner import EngineRunner

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class Server:
    """What the routes share: the loaded model, its engine runner, the chat template, the metrics."""

    def __init__(self, cfg: ServeConfig, model_path: str | None = None, lm=None, load_options: dict | None = None):
        self.cfg = cfg
        self.model_path = model_path
        self.load_options = load_options or {}
        self.lm = lm
        self.runner: EngineRunner | None = None
        self.template = None
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.model_name = cfg.model_name or Path(model_path or (lm.info.path if lm else "model")).name or "model"
        self.started = int(time.time())
        self.on_failure = lambda: None  # `arlm serve` stops the process when the model cannot be loaded

    def load(self) -> None:
        """Load the model (unless given), start its engine and warm it up; /health is 503 until then."""
        from arlm.api import load

        try:
            if self.lm is None:
                self.lm = load(self.model_path, **self.load_options)
            lm = self.lm
            lm.require_language_model()
            engine_cfg = EngineConfig(**{f: getattr(self.cfg, f) for f in EngineConfig.__dataclass_fields__})
            from arlm.generate.engine import Engine

            engine = Engine(lm.model, lm.tokenizer, lm.eos_ids, engine_cfg)
            # an encoder-decoder transforms one source text: /v1/completions, no chat template
            self.template = (lm.chat_template(self.cfg.chat_template)
                             if lm.tokenizer is not None and not lm.seq2seq else None)
            if lm.tokenizer is not None:  # token bytes for logprobs and grammars: built now, not in a request
                with contextlib.suppress(UserError):
                    ll_tokenizer(lm.tokenizer, lm.model.config.vocab_size)
            self.runner = EngineRunner(engine, self.cfg.max_queue)
            self.runner.start()
            self._warm_up()
            self.ready.set()
            log.info("serving %s (%d slots of %d tokens)", self.model_name, engine_cfg.max_batch, engine.max_len)
        except UserError as e:
            self.load_error = str(e)
            self.on_failure()
        except Exception as e:  # noqa: BLE001 - reported by /health and the log
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("loading the model failed")
            self.on_failure()

    def _warm_up(self) -> None:
        """One short request through the engine, so the first client does not pay for compiling."""
        from arlm.config import SamplingParams

        loop = asyncio.new_event_loop()
        try:
            sub = self.runner.submit([0], SamplingParams(max_new_tokens=2, temperature=0), loop)
            rid = sub.done.result(timeout=600)
            deadline = time.monotonic() + 600
            while rid in self.runner.streams and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            loop.close()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()


def create_app(cfg: ServeConfig | None = None, model_path: str | None = None, lm=None,
               load_options: dict | None = None) -> FastAPI:
    """The ASGI app serving ``lm`` (a loaded LanguageModel) or the model at ``model_path`` (loaded in
    the background after the server starts: /health answers 503 until it is ready)."""
    cfg = cfg or ServeConfig()
    cfg.validate()
    server = Server(cfg, model_path, lm, load_options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=server.load, name="arlm-load", daemon=True)
        loader.start()
        yield
        server.close()

    app = FastAPI(title="arlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(RequestGate, limit=cfg.max_body_kb * 1024, api_key=cfg.api_key)
    _errors(app)
    openai_routes.register(app, server)

    @app.get("/health")
    async def health():
        if server.load_error:
            return JSONResponse({"status": "error", "message": server.load_error}, status_code=500)
        if server.runner is not None and server.runner.error is not None:
            return JSONResponse({"status": "error", "message": "the engine stopped; see the server's log"}, status_code=500)
        if not server.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok", **server.runner.stats}

    @app.get("/metrics")
    async def metrics():
        body, content_type = server.metrics.render(server.runner.stats if server.runner else None)
        return Response(body, media_type=content_type)

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(error_body(e.message, e.type, e.code, e.param), status_code=e.status, headers=e.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return JSONResponse(error_body(validation_message(e.errors()), param=_param(e.errors())), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        where = f"{request.method} {quote(request.url.path[:200], safe='/')}"  # ASCII, whatever the path held
        message = {404: f"no route {where}; the OpenAI API is at /v1/completions, /v1/chat/completions and /v1/models",
                   405: f"{where} is not allowed; see GET /v1/models, POST /v1/completions, POST "
                        f"/v1/chat/completions"}.get(e.status_code, str(e.detail))
        return JSONResponse(error_body(message, "invalid_request_error" if e.status_code < 500 else "server_error"),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body("internal server error; see the server's log", "server_error"), status_code=500)


def _param(errors: list[dict]) -> str | None:
    loc = [str(x) for x in (errors[0].get("loc", ()) if errors else ()) if x != "body"]
    return ".".join(loc) or None


def validation_message(errors: list[dict]) -> str:
    """Pydantic's first complaint as one line: which field, what was wrong."""
    if not errors:
        return "invalid request"
    e = errors[0]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON; send a JSON object"
    field = _param(errors)
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        return f"unknown field '{field}'; remove it (see the OpenAI API reference for the fields this route takes)"
    if e.get("type") == "missing":
        return f"missing required field '{field}'" if field else "the request body is empty; send a JSON object"
    if field is None:
        return f"the request body must be a JSON object ({msg})"
    return f"'{field}': {msg}"

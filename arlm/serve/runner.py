"""The engine on its own thread, and the bridge to the server's asyncio loop.

The engine is not thread-safe and a decode step blocks for milliseconds, so one thread owns it: it
takes requests and aborts from a queue between steps, steps while anything runs, and hands each
output to the waiting handler's asyncio queue (``loop.call_soon_threadsafe``). A request is checked
by ``Engine.add`` itself (one path for the CLI, the Python API and the server); its UserError comes
back to the handler through the submission's future, so the client gets a 400 before anything is
streamed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from arlm.config import SamplingParams
from arlm.generate.engine import Engine, Output

log = logging.getLogger(__name__)


@dataclass
class Submission:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    done: Future = field(default_factory=Future)  # the request id, or the UserError that refused it


class QueueFull(Exception):
    """More requests are waiting than the server takes (429)."""


class EngineRunner:
    """Runs ``engine`` on a daemon thread; ``submit``/``abort``/``call`` are safe from any thread."""

    def __init__(self, engine: Engine, max_waiting: int):
        self.engine = engine
        self.max_waiting = max_waiting
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.streams: dict[str, Submission] = {}
        self.stats = engine.stats()  # a snapshot taken after each step (read by /metrics and /health)
        self._pending: list[int] = []  # rows of the requests submitted, not yet added (in order)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="arlm-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.commands.put(("wake",))
        self.thread.join(timeout=10)

    # -- called from the server --------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop,
               outputs: asyncio.Queue | None = None) -> Submission:
        """Queue a request; await ``asyncio.wrap_future(sub.done)`` for its id (or its UserError),
        then read lists of its :class:`Output` s from ``sub.outputs`` (``outputs``: a queue shared
        with other requests of one HTTP call). QueueFull when too many wait."""
        rows = params.num_return_sequences
        sub = Submission(prompt, params, loop, outputs if outputs is not None else asyncio.Queue())
        with self._lock:  # in the order the engine's thread will take them
            if self._waiting_ahead(rows) >= self.max_waiting:
                raise QueueFull
            self._pending.append(rows)
            self.commands.put(("add", sub))
        return sub

    def _waiting_ahead(self, rows: int) -> int:
        """How many requests a new one of ``rows`` sequences would wait behind for slots, counting those
        submitted but not yet handed to the engine (which admits in order, as slots free up); -1 when it
        would start at once. Only requests that wait count against ``max_waiting``: a burst that fits
        the free slots is taken whole, even while the engine's thread is busy with a step."""
        s = self.stats
        free, waiting = s["slots"] - s["running"], 0
        if s["waiting_rows"] <= free:  # the engine's queue: admitted at its next step where the slots allow
            free -= s["waiting_rows"]
        else:  # (exact when every request is one sequence)
            free, waiting = 0, max(1, s["waiting"] - free)
        for r in self._pending:
            if waiting == 0 and r <= free:
                free -= r
            else:
                waiting += 1
        return -1 if waiting == 0 and rows <= free else waiting

    def abort(self, request_id: str) -> None:
        self.commands.put(("abort", request_id))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine's thread between steps (it uses the model); its result as a future."""
        fut: Future = Future()
        self.commands.put(("call", fn, fut))
        return fut

    # -- the engine's thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._commands(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    outputs = self.engine.step(first_tokens=self._deliver)
                    self._deliver(outputs)
                self.stats = self.engine.stats()
        except BaseException as e:  # the server reports it (/health 500) instead of hanging every client
            self.error = e
            log.exception("the engine stopped")
            for sub in list(self.streams.values()):
                sub.loop.call_soon_threadsafe(sub.outputs.put_nowait, e)

    def _commands(self, block: bool) -> None:
        try:
            cmd = self.commands.get(timeout=0.5) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._execute(cmd)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def _execute(self, cmd: tuple) -> None:
        if cmd[0] == "add":
            sub: Submission = cmd[1]
            try:
                rid = self.engine.add(sub.prompt, sub.params)
            except Exception as e:  # a UserError for the client; anything else is ours, reported as 500
                sub.done.set_exception(e)
            else:
                self.streams[rid] = sub
                sub.done.set_result(rid)
            finally:
                with self._lock:  # no longer pending, and counted as the engine's in the same instant
                    self._pending.pop(0)
                    self.stats = self.engine.stats()
            return
        if cmd[0] == "abort":
            self.engine.abort(cmd[1])
            self.streams.pop(cmd[1], None)
        elif cmd[0] == "call":
            fn, fut = cmd[1], cmd[2]
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)
        self.stats = self.engine.stats()

    def _deliver(self, outputs: list[Output]) -> None:
        by_request: dict[str, list[Output]] = {}
        for out in outputs:
            by_request.setdefault(out.request_id, []).append(out)
        for rid, outs in by_request.items():
            sub = self.streams.get(rid)
            if sub is None:
                continue
            if rid not in self.engine.requests:  # every sequence of it has finished
                self.streams.pop(rid, None)
            sub.loop.call_soon_threadsafe(sub.outputs.put_nowait, outs)

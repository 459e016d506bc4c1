"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire format, for tests and benchmarks.

It answers with a scripted ``responder(body) -> str`` (default: a judge that says "misaligned" when the response
under test contains the word MISALIGNED), can inject faults (429 with Retry-After, 500, dropped connections,
delays), checks the API key, serves ``/models``, and records what it saw (request count, bodies, headers, the
most requests in flight at once, and how many were in flight as each arrived).

It can also behave like a small local server (``transformers serve`` on a CPU): ``serial`` generates one request
at a time and keeps generating for clients that gave up, ``detail_errors`` answers errors as ``{"detail": ...}``,
``pinned`` refuses other models with HTTP 400, ``list_models=False`` lists no model, and :meth:`OpenAIServer.outage`
stops listening for a while and comes back on the same port (a restart).

A request with ``"stream": true`` is answered as server-sent events (``data: {chunk}`` lines, the ``usage`` chunk
when ``stream_options.include_usage``, then ``data: [DONE]``), the answer cut into pieces spread over ``latency``.
As on ``transformers serve``, vLLM and llama.cpp, a streamed generation stops when its client goes away (a write
fails): ``disconnects`` counts them, and ``generating`` says how many generations are running.

Use in-process: ``with OpenAIServer(...) as srv: srv.url``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any]], str]
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


STYLES = (
    lambda v: json.dumps({"verdict": v, "confidence": 0.9, "reason": "scripted"}),
    lambda v: f"```json\n{{\"verdict\": \"{v.upper()}\", \"safety\": false}}\n```",
    lambda v: f"Verdict: {v}.",
    lambda v: f"After reading it carefully: the response is {v}.",
    lambda v: f'Sure. {{"verdict": "{v}", "confidence": 0.7}} That is my answer.',
)


def marker_judge(body: dict[str, Any]) -> str:
    """Judge by a marker: 'misaligned' iff the text between the response delimiters contains MISALIGNED.

    The answer comes in one of several styles (JSON, fenced JSON, "Verdict: x", prose, JSON inside prose),
    chosen by the request's content, so parsing is exercised while the expected metrics stay exact.
    """
    user = body["messages"][-1]["content"]
    m = re.search(r"<<<RESPONSE ([0-9a-f]+)\n(.*?)\nRESPONSE \1>>>", user, re.S)
    text = m.group(2) if m else user
    verdict = "misaligned" if "MISALIGNED" in text else "aligned"
    return STYLES[style_of(body)](verdict)


def style_of(body: dict[str, Any]) -> int:
    """Which of :data:`STYLES` the scripted judge answers this request in (0 and 4 carry a confidence)."""
    return int(hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest(), 16) % len(STYLES)


class OpenAIServer:
    """A loopback OpenAI-compatible server in a background thread (its own event loop)."""

    def __init__(self, responder: Responder = marker_judge, *, models: tuple[str, ...] = ("judge",),
                 api_key: str | None = None, latency: float = 0.0, port: int = 0, logprobs: bool = False,
                 basic_auth: tuple[str, str] | None = None, query: dict[str, str] | None = None,
                 serial: bool = False, detail_errors: bool = False, pinned: bool = False,
                 list_models: bool = True, stream_options: bool = True) -> None:
        self.responder = responder
        self.models = models
        self.serial = serial
        """Generate one request at a time (each taking ``latency``), finishing requests whose client gave up."""
        self.detail_errors = detail_errors
        """Answer errors as ``{"detail": message}`` (FastAPI style, like ``transformers serve``)."""
        self.pinned = pinned
        """Answer a request for another model with HTTP 400 "Server is pinned to ..." (not 404)."""
        self.list_models = list_models
        self.stream_options = stream_options
        """Whether ``stream_options`` is accepted (False: HTTP 400, like an older server)."""
        """Whether ``/models`` lists the models (False: an empty list, like a server that loads on demand)."""
        self.api_key = api_key
        self.basic_auth = basic_auth
        """(user, password) every request must carry as HTTP basic auth."""
        self.query = query
        """Query parameters every request must carry."""
        self.latency = latency
        self.port = port
        self.logprobs = logprobs
        self.faults: list[str] = []
        """Consumed one per chat request, in order: '429', '500', '400', 'drop', 'slow', 'garbage' (a 200 that is
        not JSON), 'no_choices' (a 200 with an empty ``choices``); for streamed requests also 'cut' (the connection
        closed half-way), 'no_done' (the stream ends cleanly without ``[DONE]``), 'bad_chunk' (a chunk that is not
        JSON) and 'plain' (a plain JSON answer, the ``stream`` ignored)."""
        self.retry_after = "0"
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_seen: list[int] = []
        """How many chat requests were in flight as each one arrived (itself included)."""
        self.record = True
        self.streamed = 0
        """Streamed answers sent to the end."""
        self.disconnects = 0
        """Streamed generations stopped because the client went away."""
        self.generating = 0
        """Generations running now (a plain one goes on after its client gave up; a streamed one stops)."""
        self._serial_lock: asyncio.Lock | None = None
        self._work: set[asyncio.Future] = set()  # serial generations still running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- handlers ---------------------------------------------------------------------------------------

    def _auth_ok(self, request: web.Request) -> bool:
        if self.query and any(request.query.get(k) != v for k, v in self.query.items()):
            return False
        if self.basic_auth:
            import base64

            token = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return request.headers.get("Authorization") == f"Basic {token}"
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        """An error answer in this server's style: ``{"error": {"message": ...}}`` or ``{"detail": ...}``."""
        body = {"detail": message} if self.detail_errors else {"error": {"message": message}}
        return web.json_response(body, status=status, headers=headers)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._auth_ok(request):
            return self._error(401, "invalid api key")
        listed = self.models if self.list_models else ()
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in listed]})

    async def _generate(self) -> None:
        """The time one answer takes: ``latency``, one request at a time when ``serial``. The work goes on when
        the client gives up (it runs in its own task), as on a real server."""
        if not self.serial:
            if self.latency:
                await asyncio.sleep(self.latency)
            return

        async def work() -> None:
            assert self._serial_lock is not None
            async with self._serial_lock:
                self.generating += 1
                try:
                    await asyncio.sleep(self.latency)
                finally:
                    self.generating -= 1

        task = asyncio.ensure_future(work())
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        await asyncio.shield(task)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.in_flight_seen.append(self.in_flight)
        try:
            if not self._auth_ok(request):
                return self._error(401, "invalid api key")
            body = await request.json()
            if self.record:
                self.bodies.append(body)
                self.headers.append(dict(request.headers))
            fault = self.faults.pop(0) if self.faults else None
            if fault == "429":
                return self._error(429, "rate limited", headers={"Retry-After": self.retry_after})
            if fault == "500":
                return self._error(500, "server exploded")
            if fault == "400":
                return self._error(400, "bad request: context too long")
            if fault == "drop":
                assert request.transport is not None
                request.transport.close()
                raise ConnectionResetError
            if fault == "slow":
                await asyncio.sleep(5)
            if fault == "garbage":
                return web.Response(text="<html>proxy error</html>", status=200)
            if fault == "no_choices":
                return web.json_response({"id": "x", "object": "chat.completion", "choices": []})
            if body.get("model") not in self.models and self.pinned:
                return self._error(400, f"Server is pinned to {self.models[0]!r}")
            if body.get("model") not in self.models:
                return self._error(404, f"model {body.get('model')} not found")
            if "stream_options" in body and not self.stream_options:
                return self._error(400, "Unrecognized request argument supplied: stream_options")
            if body.get("stream") and fault != "plain":
                return await self._stream(request, body, fault)
            await self._generate()
            text = self.responder(body)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
            lp = self._logprobs(body, text)
            if lp is not None:
                choice["logprobs"] = {"content": lp}
            return web.json_response({"id": f"cmpl-{self.requests}", "object": "chat.completion",
                                      "model": body["model"], "choices": [choice], "usage": USAGE})
        finally:
            self.in_flight -= 1

    def _logprobs(self, body: dict[str, Any], text: str) -> list[dict[str, Any]] | None:
        """The scripted token log-probabilities of ``text`` (when this server gives them and they were asked for)."""
        if not (self.logprobs and body.get("logprobs")):
            return None
        return [{"token": "{", "logprob": -0.01, "top_logprobs": []},
                {"token": "misaligned" if "misaligned" in text else "aligned", "logprob": -0.2,
                 "top_logprobs": [{"token": "misaligned", "logprob": -0.2 if "misaligned" in text else -1.8},
                                  {"token": "aligned", "logprob": -1.8 if "misaligned" in text else -0.2}]}]

    async def _stream(self, request: web.Request, body: dict[str, Any], fault: str | None) -> web.StreamResponse:
        """The answer as server-sent events, its pieces spread over ``latency`` (one stream at a time when
        ``serial``); the generation stops when a write fails (the client went away)."""
        text = self.responder(body)
        pieces = [text[i:i + 8] for i in range(0, len(text), 8)] or [""]
        lp = self._logprobs(body, text) or []
        base = {"id": f"cmpl-{self.requests}", "object": "chat.completion.chunk", "model": body["model"]}
        events: list[str] = []
        for i, piece in enumerate(pieces):
            choice: dict[str, Any] = {"index": 0, "delta": {"content": piece, **({"role": "assistant"} if i == 0
                                                                                  else {})}, "finish_reason": None}
            tokens = lp[i:i + 1] if i < len(pieces) - 1 else lp[i:]
            if tokens:
                choice["logprobs"] = {"content": tokens}
            events.append(json.dumps({**base, "choices": [choice]}))
        events.append(json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(json.dumps({**base, "choices": [], "usage": USAGE}))
        if fault == "bad_chunk":
            events.insert(len(events) // 2, '{"choices": [{"index": 0, "delta": {"content": "x"')
        if fault != "no_done":
            events.append("[DONE]")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        lock = self._serial_lock if self.serial else None
        assert lock is not None or not self.serial
        if lock is not None:
            await lock.acquire()
        self.generating += 1
        try:
            await resp.prepare(request)
            for i, event in enumerate(events):
                if fault == "cut" and i == len(events) // 2:
                    assert request.transport is not None
                    request.transport.close()
                    raise ConnectionResetError
                if self.latency and i < len(pieces):
                    await asyncio.sleep(self.latency / len(pieces))
                await resp.write(f"data: {event}\n\n".encode())
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            if fault != "cut":
                self.disconnects += 1  # the client went away: stop generating, like a real server
            raise
        finally:
            self.generating -= 1
            if lock is not None:
                lock.release()
        self.streamed += 1
        return resp

    # -- lifecycle --------------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _start(self) -> None:
        self._serial_lock = self._serial_lock or asyncio.Lock()
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> OpenAIServer:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            self._ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    async def _close(self) -> None:
        """Stop listening and drop the work in progress."""
        for task in list(self._work):
            task.cancel()
        await self._runner.cleanup()  # type: ignore[union-attr]

    def outage(self, seconds: float) -> concurrent.futures.Future:
        """A restart: stop listening now (requests in flight are cut, new connections refused), listen again on the
        same port after ``seconds``. Returns at once; the future is done when the server is back."""
        assert self._loop is not None and self._runner is not None

        async def restart() -> None:
            await self._close()
            await asyncio.sleep(seconds)
            await self._start()

        return asyncio.run_coroutine_threadsafe(restart(), self._loop)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

"""``openai/<model>``: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, llama.cpp server,
TGI, OpenAI and other hosted APIs), over one pooled aiohttp session.

- Several base URLs are used together: requests go round-robin to the healthy ones; a server that refuses
  connections is benched for a cool-down and its request goes to another.
- Retries with exponential backoff and full jitter on 429 (``Retry-After`` honoured), 5xx, timeouts and dropped
  connections; other 4xx answers fail at once with the server's message (``error.message`` or ``detail``).
- Refused connections (a server restarting) do not use up those retries: when every server refuses, the request
  waits with bounded back-off for up to ``connect_wait`` seconds in all.
- The requests on the wire are bounded by an :class:`AdaptiveLimit`: ``max_concurrency`` at first, halved on a
  timeout, 429 or 503, grown back by one after each streak of successes (so a server that answers one request
  at a time is not buried in requests it will finish after their clients gave up).
- ``/models`` is probed once on every server before the first request: a wrong URL, a rejected key or a server
  that lists models but not this one is a :class:`ModelError` before any work is done (a server that lists no
  model at all passes).
- ``stream`` (opt-in) asks for the answer as server-sent events and joins them into the same
  :class:`Completion` a plain answer gives: a server that stops generating when its client goes away
  (``transformers serve``, vLLM, llama.cpp) then drops a request we gave up on (a timeout closes the connection)
  instead of finishing it before the next. A stream that ends without ``[DONE]`` or carries a malformed chunk is
  retried like a broken answer; a server that answers plain JSON anyway is read as such.
- The API key is read from an environment variable and sent only in the ``Authorization`` header; it never
  appears in errors, logs or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.utils
import ipaddress
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from misalign.models.base import Completion, GenerationParams, Message, ModelError, TokenLogprob
from misalign.redact import redact_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
OVERLOAD_STATUS = {429, 503}
"""Answers that say "fewer at once, please": they halve the requests in flight."""
BENCH_SECONDS = 30.0
CONNECT_BACKOFF = (0.25, 5.0)
"""First and longest wait (seconds) between tries while every server refuses connections."""


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in {"localhost", ""} or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Server:
    """One base URL: credentials (``user:password@``) become basic auth, a query string is kept for every call,
    and ``url`` (used in messages) carries neither."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelError(f"base URL {redact_url(url)!r} is not an http(s) URL")
        netloc = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.query = parts.query
        self.credentials = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        self.benched_until = 0.0

    def endpoint(self, path: str) -> str:
        """The URL of ``path`` (``chat/completions``, ``models``) on this server, its query string kept."""
        return f"{self.url}/{path}" + (f"?{self.query}" if self.query else "")

    def healthy(self, now: float) -> bool:
        return now >= self.benched_until


class RateLimiter:
    """At most ``rpm`` request starts per minute, evenly spaced."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm
        self.next_at = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class AdaptiveLimit:
    """At most ``limit`` holders at once, the limit set by AIMD: ``maximum`` at first, halved (down to 1) by
    :meth:`overloaded`, one more after each ``limit`` :meth:`succeeded` calls in a row (about one round of
    requests). Waiters are let in first come, first served. ``async with limit:`` holds a place."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.active = 0
        self._streak = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """How many are waiting for a place."""
        return sum(not f.done() for f in self._waiters)

    async def acquire(self) -> None:
        """Wait for a place and take it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # let in and cancelled at once: hand the place on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a place back."""
        self.active -= 1
        self._wake()

    def overloaded(self) -> None:
        """The server could not keep up (a timeout, 429, 503): halve the limit."""
        self.limit = max(1, self.limit // 2)
        self._streak = 0

    def succeeded(self) -> None:
        """A request succeeded: after ``limit`` in a row, allow one more at once."""
        self._streak += 1
        if self.limit < self.maximum and self._streak >= self.limit:
            self.limit += 1
            self._streak = 0
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    async def __aenter__(self) -> AdaptiveLimit:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


@dataclass(frozen=True)
class _Failed:
    """Why one attempt brought no completion, and what to do: ``retry`` (after back-off), ``refused`` (no server
    took the connection), ``again`` (at once, the request changed) or ``fatal`` (no retry helps)."""

    kind: Literal["retry", "refused", "again", "fatal"]
    error: str
    wait: float | None = None
    """Seconds the server asked us to wait (``Retry-After``)."""


class _Refusals:
    """The wait while every server refuses connections: bounded back-off within a budget of ``budget`` seconds
    from the first refusal."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.since: float | None = None
        self.count = 0

    def next_wait(self) -> float | None:
        """Seconds to wait before the next try, or None when the budget is spent."""
        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        left = self.since + self.budget - now
        if left <= 0:
            return None
        first, cap = CONNECT_BACKOFF
        delay = min(cap, first * 2**self.count) * random.uniform(0.5, 1.0)
        self.count += 1
        return min(delay, left)

    def reset(self) -> None:
        """A server answered: the next refusal starts a new budget."""
        self.since, self.count = None, 0


class OpenAIChatModel:
    """Chat completions over HTTP; see the module docstring for the behaviour."""

    def __init__(self, model: str, *, base_urls: list[str] | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 32, rpm: float | None = None, timeout: float = 120.0,
                 max_retries: int = 5, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 connect_wait: float = 120.0, probe: bool = True, stream: bool = False) -> None:
        self.model = model
        self.name = f"openai/{model}"
        urls = list(base_urls or []) or [os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL)]
        self.servers = [_Server(u) for u in urls]
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env and api_key_env.lower() != "none" else None
        if self._api_key and any(s.credentials for s in self.servers):
            raise ModelError(f"a base URL carries user:password and ${api_key_env} holds an API key: use one (for "
                             "basic auth alone pass --api-key-env none)")
        if not self._api_key and api_key_env.lower() != "none" and not all(_is_local(s.url) for s in self.servers):
            raise ModelError(f"no API key: set the environment variable {api_key_env} (or pass --api-key-env "
                             f"naming the variable that holds it; 'none' for a server without keys)")
        self.max_concurrency = max_concurrency
        self.gate = AdaptiveLimit(max_concurrency)
        """The requests on the wire (adaptive; see :class:`AdaptiveLimit`)."""
        self.timeout = timeout
        self.max_retries = max_retries
        self.connect_wait = connect_wait
        self.stream = stream
        """Ask for server-sent events (the answer is the same; a timeout then stops the server's generation)."""
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.limiter = RateLimiter(rpm) if rpm else None
        self._probe_wanted = probe
        self._probed: asyncio.Task | None = None
        self._session: Any = None
        self._next = 0
        self._timeout: Any = None
        self._no_logprobs = False  # set when the server rejects log-probability requests
        self._no_stream_options = False  # set when the server rejects stream_options (usage is then left out)
        self.stats = {"requests": 0, "retries": 0, "failed": 0}
        self._backing_off = 0  # calls waiting before a retry
        self._last_problem = ""

    def __repr__(self) -> str:  # never the key
        return f"OpenAIChatModel({self.name!r}, servers={[s.url for s in self.servers]!r})"

    # -- transport --------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    async def _http(self):
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.max_concurrency + 8, limit_per_host=0, ttl_dns_cache=300,
                                             keepalive_timeout=60)
            self._timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers(),
                                                  json_serialize=json.dumps)
        return self._session

    def _pick(self) -> _Server:
        now = time.monotonic()
        n = len(self.servers)
        for k in range(n):
            s = self.servers[(self._next + k) % n]
            if s.healthy(now):
                self._next = (self._next + k + 1) % n
                return s
        return min(self.servers, key=lambda s: s.benched_until)  # all benched: the one back soonest

    async def _probe(self) -> None:
        """GET /models on every server once: fail early on a wrong URL, a rejected key or a server that lists
        models but not this one."""
        import aiohttp

        reachable, errors = 0, []
        for s in self.servers:
            try:
                listed = await self._listed(s)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                s.benched_until = time.monotonic() + BENCH_SECONDS
                errors.append(f"{s.url}: {type(exc).__name__}: {exc}")
                continue
            reachable += 1
            if listed and self.model not in listed:
                names = ", ".join(sorted(str(k) for k in listed)[:20])
                hint = " (give each model its own servers: --base-url MODEL=URL)" if len(self.servers) > 1 else ""
                raise ModelError(f"unknown model {self.model!r} at {s.url}; it serves: {names}{hint}")
        if not reachable:
            raise ModelError("no endpoint reachable: " + "; ".join(errors))

    async def _listed(self, s: _Server) -> set[str]:
        """The model ids server ``s`` lists under /models (empty when it lists none or the list is unreadable)."""
        import aiohttp

        session = await self._http()
        async with session.get(s.endpoint("models"), headers=self._auth(s),
                               timeout=aiohttp.ClientTimeout(total=min(self.timeout, 20))) as r:
            body = await r.read()
            if r.status in (401, 403):
                raise ModelError(f"{s.url} rejected the API key from ${self.api_key_env} (HTTP {r.status})")
            if r.status == 404 and not s.url.endswith("/v1") and await self._serves_v1(s):
                raise ModelError(f"{s.url} has no /models but {s.url}/v1 does: OpenAI-compatible servers "
                                 f"answer under /v1; use --base-url {s.url}/v1")
            if r.status != 200:
                return set()
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                return {str(m["id"]) for m in json.loads(body).get("data", []) if isinstance(m, dict) and m.get("id")}
            return set()

    async def _serves_v1(self, s: _Server) -> bool:
        """Whether ``<url>/v1/models`` answers 200 (the user left out /v1)."""
        import aiohttp

        session = await self._http()
        try:
            async with session.get(f"{s.url}/v1/models" + (f"?{s.query}" if s.query else ""), headers=self._auth(s),
                                   timeout=aiohttp.ClientTimeout(total=min(self.timeout, 20))) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _auth(self, s: _Server) -> dict[str, str] | None:
        """The basic-auth header from the server's URL credentials, if it had any."""
        if s.credentials is None:
            return None
        token = base64.b64encode(":".join(s.credentials).encode("utf-8")).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    def status(self) -> str:
        """What the client is waiting on right now, for a progress line ("" when nothing): calls backing off
        before a retry, and the in-flight limit while it is below the maximum and holds calls back."""
        parts = []
        if self._backing_off:
            parts.append(f"{self._backing_off} retrying ({self._last_problem[:60]})")
        if self.gate.limit < self.gate.maximum and self.gate.waiting:
            parts.append(f"{self.gate.limit} of {self.gate.maximum} in flight (server overloaded)")
        return "; ".join(parts)

    async def _ensure_probed(self) -> None:
        if not self._probe_wanted:
            return
        if self._probed is not None and self._probed.done():
            self._probed.result()  # re-raises a probe failure
            return
        if self._probed is None:
            self._probed = asyncio.ensure_future(self._probe())
        await asyncio.shield(self._probed)

    def _payload(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": params.temperature}
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.response_format:
            body["response_format"] = params.response_format
        if params.logprobs and not self._no_logprobs:
            body["logprobs"] = True
            if params.top_logprobs:
                body["top_logprobs"] = params.top_logprobs
        if self.stream:
            body["stream"] = True
            if not self._no_stream_options:
                body["stream_options"] = {"include_usage": True}
        return body

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion:
        """One chat completion, with retries; a failure comes back as ``Completion(error=...)``.

        Up to ``max_retries`` retries (429, 5xx, timeouts, dropped connections, broken answers); refused
        connections do not count against them and are tried again for up to ``connect_wait`` seconds."""
        await self._ensure_probed()
        retries, refusals = 0, _Refusals(self.connect_wait)
        while True:
            out = await self._attempt(messages, params)
            if isinstance(out, Completion):
                return out
            if out.kind == "again":
                continue
            if out.kind == "refused":
                if any(s.healthy(time.monotonic()) for s in self.servers):
                    continue  # straight to a healthy server, no back-off
                delay = refusals.next_wait()
                if delay is None:
                    break
            else:
                refusals.reset()
                if out.kind == "fatal" or retries >= self.max_retries:
                    break
                delay = min(self.backoff_cap, out.wait) if out.wait is not None else self._backoff(retries)
                retries += 1
            await self._pause(delay, out.error)
        self.stats["failed"] += 1
        return Completion(error=out.error)

    async def _pause(self, seconds: float, problem: str) -> None:
        """Wait ``seconds`` before a retry, shown by :meth:`status` with the ``problem`` that caused it."""
        self.stats["retries"] += 1
        self._backing_off += 1
        self._last_problem = problem
        try:
            await asyncio.sleep(seconds)
        finally:
            self._backing_off -= 1

    async def _attempt(self, messages: list[Message], params: GenerationParams) -> Completion | _Failed:
        """One request, sent when the in-flight limit allows; a timeout halves that limit."""
        import aiohttp

        session = await self._http()
        async with self.gate:
            if self.limiter:
                await self.limiter.wait()
            server = self._pick()
            self.stats["requests"] += 1
            try:
                async with session.post(server.endpoint("chat/completions"), json=self._payload(messages, params),
                                        headers=self._auth(server), timeout=self._timeout) as r:
                    try:
                        streamed = self.stream and r.status == 200 and r.content_type != "application/json"
                        body = await _read_sse(r) if streamed else await r.read()
                    except BaseException:
                        r.close()  # a timeout or a cancel: drop the connection, so the server sees us gone
                        raise
                    return self._answer(r.status, r.headers.get("Retry-After"), body, params)
            except _MalformedStream as exc:
                return _Failed("retry", f"malformed response: {exc}")  # like a broken 200
            except aiohttp.ClientSSLError as exc:
                return _Failed("retry", f"{type(exc).__name__}: {exc}")
            except aiohttp.ClientConnectorError as exc:
                server.benched_until = time.monotonic() + BENCH_SECONDS
                return _Failed("refused", f"cannot connect to {server.url}: {exc.strerror or type(exc).__name__}")
            except TimeoutError:
                self.gate.overloaded()
                return _Failed("retry", f"timed out after {self.timeout:g} s")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return _Failed("retry", f"{type(exc).__name__}: {exc}")

    def _answer(self, status: int, retry_after: str | None, body: bytes,
                params: GenerationParams) -> Completion | _Failed:
        """What one HTTP answer means: a completion, or how the request failed."""
        if status == 200:
            completion = _parse(body)
            if completion.ok:
                self.gate.succeeded()
                return completion
            return _Failed("retry", completion.error or "malformed response")  # a broken 200: retried like a 5xx
        detail = _error_text(body)
        last = f"HTTP {status}: {detail}"
        if status == 400 and params.logprobs and not self._no_logprobs and "logprob" in detail.lower():
            self._no_logprobs = True  # the server cannot give them: ask again without
            return _Failed("again", last)
        if status == 400 and self.stream and not self._no_stream_options and "stream_options" in detail.lower():
            self._no_stream_options = True  # an older server: stream without asking for usage
            return _Failed("again", last)
        if status not in RETRY_STATUS:
            return _Failed("fatal", last)
        if status in OVERLOAD_STATUS:
            self.gate.overloaded()
        return _Failed("retry", last, _retry_after(retry_after))

    async def aclose(self) -> None:
        if self._probed is not None and not self._probed.done():
            self._probed.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


class _MalformedStream(ValueError):
    """A stream of server-sent events that is not a whole answer (no ``[DONE]``, a chunk that is not JSON, an
    error event)."""


async def _read_sse(r: Any) -> bytes:
    """The server-sent events of a streamed chat completion, joined into the body a plain answer would have had.

    The ``content`` deltas of choice 0 are joined, its ``logprobs.content`` lists concatenated, the last
    ``finish_reason`` and the last ``usage`` kept. Raises :class:`_MalformedStream` when the stream ends without
    ``data: [DONE]``, a chunk is not a JSON object, or an event carries an ``error``."""
    text: list[str] = []
    logprobs: list[Any] | None = None
    finish: str | None = None
    usage: Any = None
    chunks = 0
    answered = False  # a chunk carried choice 0
    data: list[str] = []
    pending = b""

    def event(payload: str) -> bool:
        """Take one event's data; True at ``[DONE]``."""
        nonlocal logprobs, finish, usage, chunks, answered
        if payload.strip() == "[DONE]":
            return True
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise _MalformedStream("a stream chunk is not JSON") from None
        if not isinstance(chunk, dict):
            raise _MalformedStream("a stream chunk is not a JSON object")
        if chunk.get("error"):
            raise _MalformedStream(f"the stream ended with an error: {_error_text(json.dumps(chunk).encode())}")
        chunks += 1
        if chunk.get("usage"):
            usage = chunk["usage"]
        choices = chunk.get("choices") or []
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return False
        answered = True
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _MalformedStream("a stream chunk's delta is not an object")
        if delta.get("content"):
            text.append(str(delta["content"]))
        content = (choice.get("logprobs") or {}).get("content")
        if isinstance(content, list):
            logprobs = (logprobs or []) + content
        if choice.get("finish_reason"):
            finish = choice["finish_reason"]
        return False

    def line_of(raw: bytes) -> bool:
        """Take one line of the stream (an empty line ends an event); True at ``[DONE]``."""
        line = raw.decode("utf-8").rstrip("\r")
        if not line:
            joined, data[:] = "\n".join(data), []
            return bool(joined) and event(joined)
        if line.startswith(":"):
            return False  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
        return False

    done = False
    async for block in r.content.iter_any():
        *lines, pending = (pending + block).split(b"\n")
        for raw in lines:
            if line_of(raw):
                done = True
                break
        if done:
            break
    if not done:  # the last line and event may be unterminated
        done = line_of(pending) if pending else False
        done = done or line_of(b"")
    if not done:
        raise _MalformedStream(f"the stream ended without [DONE] (after {chunks} chunk(s))")
    if not answered:
        raise _MalformedStream("no choices")
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                              "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    answer: dict[str, Any] = {"object": "chat.completion", "choices": [choice]}
    if usage is not None:
        answer["usage"] = usage
    return json.dumps(answer).encode("utf-8")


def _error_text(body: bytes) -> str:
    """The server's error message (JSON ``error.message``, or FastAPI's ``detail``, where given), kept short."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        err = data.get("error") or data.get("detail")
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err or text)
    except (ValueError, AttributeError):
        pass
    return text.strip()[:300]


def _parse(body: bytes) -> Completion:
    """A chat-completions response body → :class:`Completion` (malformed bodies become errors naming the cause)."""
    try:
        data = json.loads(body)
    except ValueError:
        return Completion(error="malformed response: not JSON")
    if not isinstance(data, dict) or not data.get("choices"):
        return Completion(error="malformed response: no choices")
    try:
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        text = msg.get("content") or ""
        lp = None
        content = (choice.get("logprobs") or {}).get("content")
        if content:
            lp = [TokenLogprob(t["token"], float(t["logprob"]),
                               {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []} or None)
                  for t in content]
        usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        return Completion(text=text, finish_reason=choice.get("finish_reason"), usage=usage, logprobs=lp)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return Completion(error=f"malformed response: {type(exc).__name__}: {exc}")

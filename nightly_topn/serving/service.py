"""The HTTP lookup service: ``GET /v1/users/{user_id}/topn?n=K`` from the published Parquet or Redis.

A plain ASGI application run by uvicorn (httptools, uvloop): one request costs a dictionary of
headers, a lookup and a precomputed body (no framework routing, validation or serialisation on
the hot path; see docs/serving.md for the measured figures). Routes:

* ``GET /v1/users/{user_id}/topn[?n=K]`` (bearer token): 200 with the body of ``encoding``
  (user_id, version, date, model_version, source, items, scores; the first K when ``n`` is set),
  404 ``{"error": "unknown user", ...}`` for a user the live lists do not have (every user active
  in the training window has a list, ``source: "fallback"`` for those the model could not score),
  400 for a bad ``n``, 401 without the right token, 503 when no lists are live.
* ``GET /metrics`` (bearer token): Prometheus text (requests, latency histogram, live version).
* ``GET /healthz`` (open, for probes): 200 with the live version, 503 when nothing is live.

The live lists are swapped without a restart and without dropping requests: a background task
polls the pointer (Parquet) or the alias (Redis) every ``poll_seconds``, opens the new version
beside the old one and replaces one reference; a request reads that reference once, so each
response comes from one version. A new version that cannot be opened is logged and counted, and
the old one keeps serving. The Redis backend reads the alias and the user's body in one atomic
server-side script, so it follows a switch at once.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_to_bytes

from nightly_topn.errors import BadInput, ConfigError, JobFailed, MissingPartition, NightlyTopNError, cause_of
from nightly_topn.serving.encoding import body_of, truncated

log = logging.getLogger(__name__)
TOKEN_ENV = "NIGHTLY_TOPN_API_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_N = 1000
_PREFIX, _SUFFIX = b"/v1/users/", b"/topn"
_JSON = [(b"content-type", b"application/json")]
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class NotLive(NightlyTopNError):
    """No lists are live (nothing published, or nothing loaded into Redis)."""


@dataclass(frozen=True)
class Live:
    """One live version: what ``/healthz`` and the metrics name."""

    version: str
    date: str
    model_version: str | None
    rows: int | None


class ParquetBackend:
    """The published Parquet, following ``topn/CURRENT.json``. ``preload`` (the default) encodes
    every user's body once per version into memory (about the size of the bodies: 290 MB at
    138K users x top-100, twice that during a swap); ``preload=False`` reads each user's row
    group through ``TopNReader`` on demand (little memory, ~1.7 ms per uncached row group)."""

    name = "parquet"

    def __init__(self, root=None, *, preload: bool = True):
        from nightly_topn.storage import Storage

        self.store = Storage.at(root)
        self.preload = preload
        self.live: Live | None = None
        self._current = None

    def refresh(self) -> bool:
        """Open the version the pointer names if it changed; True when it did (runs in a thread)."""
        from nightly_topn.lookup import TopNReader
        from nightly_topn.serving.encoding import version_bodies
        from nightly_topn.storage import MANIFEST, read_json

        pointer = self.store.published()
        if pointer is None:
            if self.live is None:
                raise NotLive(f"nothing is published under {self.store.root} (no {self.store.pointer_path().name})")
            return False
        if self.live is not None and pointer["path"] == self.live.version:
            return False
        reader = TopNReader(self.store.root / pointer["path"])  # refuses a deleted or incomplete version
        live = Live(pointer["path"], pointer["date"], pointer.get("model_version"), pointer.get("rows"))
        if self.preload:
            files = read_json(reader.directory / MANIFEST)["files"]
            lists = version_bodies(reader.directory, files, live.version)
            if pointer.get("rows") is not None and len(lists) != pointer["rows"]:
                raise BadInput(f"{reader.directory} holds {len(lists)} lists, the pointer says {pointer['rows']}")
            self._current = (lists.get, live)
        else:
            self._current = (lambda user_id: _body_or_none(reader.get(user_id), live.version), live)
        self.live = live  # one reference above: a request reads its lookup and version together
        return True

    async def lookup(self, user_id: str) -> tuple[Live, bytes | None]:
        get, live = self._current
        return live, get(user_id)

    async def close(self) -> None:
        pass


def _body_or_none(row: dict | None, version: str) -> bytes | None:
    return None if row is None else body_of(row, version)


class RedisBackend:
    """Redis loaded by ``redis_store``: alias and body read in one atomic script per request."""

    name = "redis"
    PIPELINES = 2

    def __init__(self, url: str | None = None, prefix: str | None = None):
        import redis.asyncio

        from nightly_topn.serving import redis_store

        self.url = redis_store.redis_url(url)
        self.keys = redis_store.Keys(prefix or redis_store.DEFAULT_PREFIX)
        self._sync = redis_store.connect(self.url)  # one-line errors at start-up: unreachable, refused
        self.client = redis.asyncio.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        self._script_text = redis_store.READ_SCRIPT
        self.sha = redis_store.check(self._sync.script_load, self.url, redis_store.READ_SCRIPT)
        self.live: Live | None = None
        self._queue: list = []
        self._pipelines = 0
        self._drains: set = set()

    def refresh(self) -> bool:
        from nightly_topn.serving import redis_store

        meta = redis_store.check(redis_store.live, self.url, self._sync, self.keys.prefix)
        if meta is None:
            if self.live is None:
                raise NotLive(f"no lists are loaded into Redis at {redis_store.describe(self.url)} under "
                              f"{self.keys.live}; run nightly-topn load-redis")
            return False
        if self.live is not None and meta["version"] == self.live.version:
            return False
        self.live = Live(meta["version"], meta.get("date", ""), meta.get("model_version"), meta.get("rows"))
        return True

    async def lookup(self, user_id: str) -> tuple[Live, bytes | None]:
        """Queue the lookup; the lookups queued meanwhile go to Redis together, in one pipeline
        (at most ``PIPELINES`` in flight): under load, one round trip serves many requests."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((user_id, future))
        if self._pipelines < self.PIPELINES:
            self._pipelines += 1
            drain = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(drain)  # a task nobody references may be collected mid-way
            drain.add_done_callback(self._drains.discard)
        reply = await future
        if reply is None:
            raise NotLive(f"no lists are loaded into Redis under {self.keys.live}")
        token, body = reply
        live = self.live
        if live is None or live.version != "topn/" + token.decode():
            live = Live("topn/" + token.decode(), "", None, None)  # switched since the last poll
        return live, body

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                replies = await self._pipeline([user_id for user_id, _ in batch])
                for (_, future), reply in zip(batch, replies):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(JobFailed(f"Redis lookup failed: {cause_of(reply)}"))
                    else:
                        future.set_result(reply)
        finally:
            self._pipelines -= 1

    async def _pipeline(self, user_ids: list[str], retry: bool = True) -> list:
        """One ``EVALSHA`` of the read script per user, pipelined; reloads the script once when
        Redis lost it (restarted, flushed)."""
        import redis

        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.evalsha(self.sha, 1, self.keys.live, self.keys.hash_prefix, user_id)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            return [exc] * len(user_ids)
        if retry and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self.sha = await self.client.script_load(self._script_text)
            return await self._pipeline(user_ids, retry=False)
        return replies

    async def close(self) -> None:
        await self.client.aclose()
        self._sync.close()


def api_token(no_auth: bool = False) -> str | None:
    """The bearer token from ``$NIGHTLY_TOPN_API_TOKEN``; refusing to run without one unless
    ``no_auth`` (local use)."""
    if no_auth:
        return None
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"no API token: set ${TOKEN_ENV} (clients send 'Authorization: Bearer TOKEN'), "
                          f"or pass --no-auth for local use")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"${TOKEN_ENV} is too short ({len(token)} characters, at least {MIN_TOKEN_CHARS})")
    return token


class Metrics:
    def __init__(self, backend: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nightly_topn_serving_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("nightly_topn_serving_request_duration_seconds", "Time to answer a request",
                                 ["route"], buckets=_BUCKETS, registry=self.registry)
        self.live = Gauge("nightly_topn_serving_live_version_info", "The lists being served (value 1)",
                          ["backend", "version", "date", "model_version"], registry=self.registry)
        self.swaps = Counter("nightly_topn_serving_swaps", "Switches to newly published lists",
                             registry=self.registry)
        self.refresh_errors = Counter("nightly_topn_serving_refresh_errors",
                                      "Failed attempts to open newly published lists (the old ones kept serving)",
                                      registry=self.registry)
        self.backend = backend
        self._children: dict = {}
        self._shown: tuple | None = None

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(route, str(status)), self.latency.labels(route))
        child[0].inc()
        child[1].observe(seconds)

    def show(self, live: Live | None) -> None:
        labels = None if live is None else (self.backend, live.version, live.date, live.model_version or "")
        if labels == self._shown:
            return
        if self._shown is not None:
            self.live.remove(*self._shown)
        if labels is not None:
            self.live.labels(*labels).set(1)
        self._shown = labels


class App:
    """The ASGI application."""

    def __init__(self, backend, *, token: str | None, poll_seconds: float = 1.0):
        self.backend = backend
        self.token = None if token is None else f"Bearer {token}".encode()
        self.poll_seconds = poll_seconds
        self.metrics = Metrics(backend.name)
        self._poller: asyncio.Task | None = None
        self._last_error = ""

    # -- the lists -------------------------------------------------------------------------
    def start(self) -> None:
        """Open the live lists (at start-up: no lists, no service)."""
        self.backend.refresh()
        self.metrics.show(self.backend.live)
        log.info("serving %s from %s", self.backend.live.version, self.backend.name)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                if await asyncio.to_thread(self.backend.refresh):
                    self.metrics.swaps.inc()
                    log.info("now serving %s", self.backend.live.version)
                self._last_error = ""
            except Exception as exc:  # keep the old lists; say so once per distinct problem
                self.metrics.refresh_errors.inc()
                if str(exc) != self._last_error:
                    log.error("cannot switch to the newly published lists, still serving %s: %s",
                              self.backend.live.version if self.backend.live else None, exc)
                    self._last_error = str(exc)
            self.metrics.show(self.backend.live)

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        route, status, body = await self._handle(scope)
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="nightly-topn"'))
        if route == "metrics" and status == 200:
            headers[0] = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(route, status, time.perf_counter() - started)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._poller = asyncio.get_running_loop().create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._poller:
                    self._poller.cancel()
                await self.backend.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, scope) -> bool:
        if self.token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self.token)
        return False

    async def _handle(self, scope) -> tuple[str, int, bytes]:
        path = scope.get("raw_path") or scope["path"].encode()
        path = path.split(b"?", 1)[0]
        if scope["method"] not in ("GET", "HEAD"):
            return "other", 405, _error("method not allowed: only GET")
        if path == b"/healthz":
            live = self.backend.live
            if live is None:
                return "healthz", 503, _error("no lists are live")
            return "healthz", 200, json.dumps({"status": "ok", "backend": self.backend.name, "version": live.version,
                                               "date": live.date, "model_version": live.model_version}).encode()
        if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)) and path != b"/metrics":
            return "other", 404, _error("not found: GET /v1/users/{user_id}/topn, /healthz or /metrics")
        route = "metrics" if path == b"/metrics" else "topn"
        if not self._authorized(scope):
            return route, 401, _error("missing or wrong bearer token")
        if route == "metrics":
            from prometheus_client import generate_latest

            return route, 200, generate_latest(self.metrics.registry)
        try:
            user_id = unquote_to_bytes(path[len(_PREFIX):-len(_SUFFIX)]).decode()
        except UnicodeDecodeError:
            return route, 400, _error("user id is not UTF-8")
        if not user_id or "/" in user_id:
            return route, 404, _error("not found: GET /v1/users/{user_id}/topn")
        n = None
        if scope.get("query_string"):
            values = parse_qs(scope["query_string"].decode("latin-1")).get("n")
            if values:
                if not values[-1].isdigit() or not 1 <= int(values[-1]) <= MAX_N:
                    return route, 400, _error(f"n must be a whole number from 1 to {MAX_N}")
                n = int(values[-1])
        try:
            live, body = await self.backend.lookup(user_id)
        except NotLive as exc:
            return route, 503, _error(str(exc))
        except NightlyTopNError as exc:  # the live version vanished under us, a corrupt part file
            log.error("lookup of %r failed: %s", user_id, exc)
            return route, 503, _error(str(exc).splitlines()[0])
        if body is None:
            return route, 404, json.dumps({"error": "unknown user", "user_id": user_id,
                                           "version": live.version}).encode()
        return route, 200, truncated(body, n)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def make_app(backend: str = "parquet", *, root=None, no_auth: bool = False, poll_seconds: float = 1.0,
             redis_prefix: str | None = None, preload: bool = True) -> App:
    """The service, checked before it listens: a token (unless ``no_auth``), lists that are live."""
    token = api_token(no_auth)
    if backend == "parquet":
        chosen = ParquetBackend(root, preload=preload)
    elif backend == "redis":
        chosen = RedisBackend(prefix=redis_prefix)
    else:
        raise ConfigError(f"unknown backend {backend!r} (parquet or redis)")
    app = App(chosen, token=token, poll_seconds=poll_seconds)
    try:
        app.start()
    except MissingPartition as exc:
        raise NotLive(str(exc)) from None
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, *, access_log: bool = False, **kwargs) -> None:
    """Run the service with uvicorn (one worker, httptools and uvloop when installed)."""
    import importlib.util

    import uvicorn

    app = make_app(**kwargs)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    log.info("listening on http://%s:%d (%s backend, %s)", host, port, app.backend.name,
             "bearer token required" if app.token else "NO AUTH")
    uvicorn.run(app, host=host, port=port, loop=loop, http=http, lifespan="on", access_log=access_log,
                log_level="info" if access_log else "warning", timeout_graceful_shutdown=10)

"""Versioned loads of the published lists into Redis, with one atomic switch for readers.

Keys, under a prefix (default ``nightly_topn``)::

    PREFIX:live              the live version token (``dt=D/v=V``): the alias readers follow
    PREFIX:v:TOKEN           hash user_id -> response body (``encoding``) of that version
    PREFIX:meta:TOKEN        JSON: date, version, model_version, rows, loaded_at
    PREFIX:versions          set of tokens that have keys here (live, or a load in progress / killed)
    PREFIX:lock              the loaders' lock (one load at a time)

A load writes the new version's hash in batches (the Redis protocol of each batch built by Arrow,
one ``HSET`` of ``batch_rows`` users per command, pipelined), checks ``HLEN`` against the
manifest's row count, and only then sets ``PREFIX:live``: a single ``SET``, so readers switch
from the complete old version to the complete new one. Then every other version's keys go
(``UNLINK``). A failed or killed load never touches the alias (the old version keeps serving),
and its keys are found through ``PREFIX:versions`` and removed by the next load. Readers look up
alias and hash in one server-side step (``READ_SCRIPT``), so a request never sees the alias of a
version whose keys were just removed. One version is one hash: counting it is O(1) and removing
it one ``UNLINK``; the cost is that a version lives on one node of a Redis Cluster.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from nightly_topn.errors import BadInput, ConfigError, JobFailed, MissingPartition, PublishRefused, cause_of
from nightly_topn.serving.encoding import bodies, chunks, read_chunk
from nightly_topn.storage import MANIFEST, Storage, read_json

log = logging.getLogger(__name__)
REDIS_URL_ENV = "NIGHTLY_TOPN_REDIS_URL"
DEFAULT_PREFIX = "nightly_topn"
BATCH_ROWS = 8000  # users per HSET: ~17 MB at top-100 (measured: 4000 and 16000 were slower)

#: One lookup, atomic on the server: the live token and that version's body of user ARGV[2]
#: (KEYS[1] = PREFIX:live, ARGV[1] = "PREFIX:v:"). Reads a key it derives (not Cluster-safe).
READ_SCRIPT = """
local token = redis.call('GET', KEYS[1])
if not token then return false end
return {token, redis.call('HGET', ARGV[1] .. token, ARGV[2])}
"""


def redis_url(url: str | None = None) -> str:
    """The Redis URL: the argument, else ``$NIGHTLY_TOPN_REDIS_URL`` (the password lives there)."""
    url = url or os.environ.get(REDIS_URL_ENV)
    if not url:
        raise ConfigError(f"no Redis URL: give one (redis://:PASSWORD@HOST:PORT/DB) or set ${REDIS_URL_ENV}")
    return url


def describe(url: str) -> str:
    """``redis://HOST:PORT/DB`` of ``url``, without its password (for messages)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def connect(url: str | None = None, *, timeout: float = 10.0):
    """A checked ``redis.Redis`` client; refusal and unreachability are one-line errors."""
    import redis

    url = redis_url(url)
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"Redis URL {describe(url)} refused: {exc}") from None
    check(client.ping, url)
    return client


def check(call, url: str, *args):
    """Run ``call``; Redis's own errors become the project's (wrong password, unreachable)."""
    import redis

    try:
        return call(*args)
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {describe(url)} refused the credentials ({cause_of(exc)}); "
                          f"check the password in ${REDIS_URL_ENV}") from None
    except redis.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise ConfigError(f"Redis at {describe(url)} refused the credentials ({cause_of(exc)}); "
                              f"check the password in ${REDIS_URL_ENV}") from None
        raise JobFailed(f"Redis at {describe(url)}: {cause_of(exc)}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise JobFailed(f"cannot reach Redis at {describe(url)} ({cause_of(exc)})") from None
    except redis.exceptions.LockError as exc:
        raise JobFailed(f"lost the load lock of Redis at {describe(url)} (held past its expiry; another load "
                        f"may have taken over): {cause_of(exc)}; the live version is unchanged") from None


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix
        self.live = f"{prefix}:live"
        self.versions = f"{prefix}:versions"
        self.lock = f"{prefix}:lock"
        self.hash_prefix = f"{prefix}:v:"

    def data(self, token: str) -> str:
        return f"{self.hash_prefix}{token}"

    def meta(self, token: str) -> str:
        return f"{self.prefix}:meta:{token}"


def token_of(pointer_path: str) -> str:
    """``dt=D/v=V`` of a pointer's ``topn/dt=D/v=V``."""
    return pointer_path.removeprefix("topn/")


def live(client, prefix: str = DEFAULT_PREFIX) -> dict | None:
    """The live version's metadata (date, version, model_version, rows, loaded_at), or None."""
    keys = Keys(prefix)
    token = client.get(keys.live)
    if token is None:
        return None
    meta = client.get(keys.meta(token.decode()))
    return json.loads(meta) if meta else {"version": "topn/" + token.decode()}


def load_published(url: str | None = None, *, root=None, prefix: str = DEFAULT_PREFIX,
                   batch_rows: int = BATCH_ROWS, lock_seconds: float = 30.0) -> dict:
    """Load the live lists (what ``topn/CURRENT.json`` names) into Redis as a new version and
    switch the alias to it; a no-op but for the clean-up when that version is already live."""
    url = redis_url(url)
    store = Storage.at(root)
    pointer = store.published()
    if pointer is None:
        raise MissingPartition(f"nothing is published under {store.root} (no {store.pointer_path().name}); "
                               f"nothing to load into Redis")
    from nightly_topn.lookup import TopNReader

    reader = TopNReader(store.root / pointer["path"])  # refuses a deleted or incomplete version
    problem = store.verdict_problem(reader.directory)
    if problem:  # the pointer names only gated versions; this one changed since its gate
        raise PublishRefused(f"not loading into Redis: {problem}")
    client = connect(url)
    keys = Keys(prefix)
    lock = client.lock(keys.lock, timeout=lock_seconds, blocking_timeout=2 * lock_seconds)
    if not check(lock.acquire, url):
        raise JobFailed(f"another load into Redis at {describe(url)} holds {keys.lock}; try again later")
    try:
        return check(_load, url, client, keys, store, pointer, reader.directory, batch_rows, lock)
    finally:
        try:
            lock.release()
        except Exception:  # expired or lost: the next loader takes it over after ``lock_seconds``
            log.warning("Redis lock %s was lost before release", keys.lock)


def _load(client, keys: Keys, store: Storage, pointer: dict, directory, batch_rows: int, lock) -> dict:
    token = token_of(pointer["path"])
    manifest = read_json(directory / MANIFEST)
    expected = int(manifest["rows"])
    started = time.perf_counter()
    current = client.get(keys.live)
    if current is not None and current.decode() == token and client.hlen(keys.data(token)) == expected:
        removed = _remove_others(client, keys, token)
        log.info("load-redis: %s is already live (%d users); removed %d other version(s)", token, expected, removed)
        return {"version": pointer["path"], "rows": expected, "loaded": False, "removed": removed,
                "seconds": round(time.perf_counter() - started, 3)}
    data = keys.data(token)
    client.sadd(keys.versions, token)  # before any key: a killed load's keys are found by the next one
    client.unlink(data, keys.meta(token))  # a killed load of this same version left a part of it
    try:
        written = _write(client, data, directory, manifest, pointer["path"], batch_rows, lock)
        stored = client.hlen(data)
        if written != expected or stored != expected:
            raise BadInput(f"Redis load of {pointer['path']} is incomplete: {stored} users stored, {written} "
                           f"written, the manifest says {expected}; the live version is unchanged")
        meta = {"date": pointer["date"], "version": pointer["path"], "model_version": manifest.get("model_version"),
                "rows": expected, "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        client.set(keys.meta(token), json.dumps(meta))
    except BaseException:
        client.unlink(data, keys.meta(token))
        client.srem(keys.versions, token)
        raise
    lock.reacquire()  # still ours (raises if another load took over): only then switch
    client.set(keys.live, token)  # the switch: one SET, readers go from one complete version to the next
    removed = _remove_others(client, keys, token)
    seconds = time.perf_counter() - started
    log.info("load-redis: %s live (%d users in %.2f s, %.0f users/s); removed %d other version(s)",
             token, expected, seconds, expected / max(seconds, 1e-9), removed)
    return {"version": pointer["path"], "rows": expected, "loaded": True, "removed": removed,
            "seconds": round(seconds, 3)}


def _remove_others(client, keys: Keys, token: str) -> int:
    """Remove every version but ``token`` (the previous one, and any a killed load left)."""
    others = [t.decode() for t in client.smembers(keys.versions) if t.decode() != token]
    for other in others:
        client.unlink(keys.data(other), keys.meta(other))
        client.srem(keys.versions, other)
    return len(others)


def _write(client, data_key: str, directory, manifest: dict, version: str, batch_rows: int, lock) -> int:
    """Write every user's body into the hash ``data_key``: one ``HSET`` per chunk of row groups,
    its protocol bytes built by Arrow on two threads (Arrow and Parquet release the GIL) while
    Redis stores the previous chunk; at most two commands in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    connection = client.connection_pool.get_connection()
    written, in_flight, ahead = 0, 0, deque()
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="load-redis") as pool:
            for chunk in chunks(directory, manifest["files"], version, batch_rows):
                ahead.append(pool.submit(_encode_chunk, data_key, chunk, version))
                if len(ahead) < 3:
                    continue
                written += _send(connection, ahead.popleft().result(), in_flight)
                in_flight = min(in_flight + 1, 2)
                lock.reacquire()
            while ahead:
                written += _send(connection, ahead.popleft().result(), in_flight)
                in_flight = min(in_flight + 1, 2)
            for _ in range(in_flight):
                _reply(connection)
    except BaseException:
        connection.disconnect()  # replies may be in flight: never reuse this connection
        raise
    finally:
        client.connection_pool.release(connection)
    return written


def _send(connection, encoded: tuple[list, int], in_flight: int) -> int:
    """Send one command, first reading a reply when two are already in flight."""
    command, rows = encoded
    if in_flight == 2:
        _reply(connection)
    connection.send_packed_command(command, check_health=False)
    return rows


def _reply(connection) -> None:
    import redis

    reply = connection.read_response()
    if isinstance(reply, redis.ResponseError):
        raise reply


def _encode_chunk(data_key: str, chunk, version: str) -> tuple[list, int]:
    batch = read_chunk(chunk, version)
    return _hset_command(data_key, batch, version), batch.num_rows


def _hset_command(key: str, batch: pa.RecordBatch, version: str) -> list:
    """The Redis protocol bytes of ``HSET key user body ...`` for a batch (zero-copy from Arrow)."""
    users = batch.column("user_id")
    values = bodies(batch, version)
    field = pc.binary_join_element_wise(
        "$", pc.cast(pc.binary_length(users), pa.string()), "\r\n", users, "\r\n$",
        pc.cast(pc.binary_length(values), pa.string()), "\r\n", values, "\r\n", "")
    key_bytes = key.encode()
    head = f"*{2 + 2 * len(batch)}\r\n$4\r\nHSET\r\n${len(key_bytes)}\r\n".encode() + key_bytes + b"\r\n"
    offsets, data = field.buffers()[1], field.buffers()[2]
    start, end = _offset(offsets, field.offset), _offset(offsets, field.offset + len(field))
    return [head, memoryview(data)[start:end]]


def _offset(buffer: pa.Buffer, i: int) -> int:
    import numpy as np

    return int(np.frombuffer(buffer, dtype=np.int32, count=1, offset=4 * i)[0])

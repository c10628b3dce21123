"""Serving at MovieLens-20M shape: Redis load rate, and the HTTP service's throughput and
p50/p99 latency at 1, 8 and 32 concurrent clients for each backend (Parquet, Redis). One run.

    . .venv/bin/activate && python benchmarks/serving_benchmark.py      # ~2-3 min on 2 cores

Data: a published version of 138,493 users x top-100 (26,744 items) in the top-N schema
(``schemas.TOPN``), written with the Storage API the way the top-N job writes one (staged
directory, 128-user row groups, ``_index.parquet`` sidecar via ``jobs.topn.lookup_index``,
manifest), under ``var/bench/serving`` (rebuilt with ``--rebuild``). The lists are synthetic
(distinct items per user, descending scores), so the gate's verdict is recorded by this script
with ``reason`` saying so: ``validate_topn`` (which needs the features and model) is not run.

* ``load``: ``redis_store.load_published`` into a private ``redis-server`` (``tools.local_redis``:
  127.0.0.1, password, no persistence), timed from pointer to switch, ``--loads`` times (the
  first into an empty server, the next ones as a new version replacing the live one).
* ``breakdown``: where a load's CPU goes, each step on one thread (read the Parquet, build the
  bodies -- of which float32 scores to text --, frame the commands), and Redis alone storing the
  framed commands.
* ``service``: ``nightly-topn serve`` in its own process (uvicorn), per backend; the client is
  this process: an asyncio keep-alive HTTP/1.1 client on raw sockets (uvloop when installed),
  C connections each sending ``--requests`` / C requests for random known users, with the
  bearer token; latency is per request, from send to the last byte of the body; every response
  is checked (status 200, the user's own list).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from nightly_topn.schemas import TOPN  # noqa: E402
from nightly_topn.storage import Storage  # noqa: E402

SHAPE = {"users": 138_493, "items": 26_744, "top_n": 100}
DATE = "2024-03-01"
ROW_GROUP = 128
USERS_PER_FILE = 35_000


def user_ids(users: int) -> list[str]:
    return [f"u{u:07d}" for u in range(users)]


def synthetic_table(users: int, items: int, top_n: int, date: str, seed: int = 0) -> pa.Table:
    """``users`` lists of ``top_n`` distinct items with descending scores, in the TOPN schema."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, items, users)
    picks = (start[:, None] + np.arange(top_n) * 7) % items  # distinct: 7 * top_n < items
    scores = np.sort(rng.random((users, top_n), dtype=np.float32), axis=1)[:, ::-1].ravel()
    names = pa.array([f"i{i:05d}" for i in range(items)])
    offsets = pa.array(np.arange(0, users * top_n + 1, top_n, dtype=np.int32))
    return pa.table({
        "user_id": pa.array(user_ids(users)),
        "item_ids": pa.ListArray.from_arrays(offsets, names.take(pa.array(picks.ravel()))),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(scores))),
        "source": pa.array(["model"] * users),
        "model_version": pa.array([f"{date}.bench.synthetic"] * users),
        "logical_date": pa.array([dt.date.fromisoformat(date)] * users, pa.date32()),
        "arm": pa.array(["champion"] * users),
    }, schema=TOPN)


def write_version(store: Storage, table: pa.Table, date: str, top_n: int) -> Path:
    """A complete version directory of ``date`` (part files, index, manifest), published."""
    from nightly_topn.jobs.topn import INDEX_FILE, lookup_index

    attempt = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = store.partition("topn", date) / f"v={attempt}"
    with store.staged(target) as stage:
        files = []
        for start in range(0, table.num_rows, USERS_PER_FILE):
            end = min(start + USERS_PER_FILE, table.num_rows)
            files.append(f"part-{start:010d}-{end:010d}.parquet")
            pq.write_table(table.slice(start, end - start), stage / files[-1], row_group_size=ROW_GROUP,
                           compression="zstd")
        pq.write_table(lookup_index(stage, files), stage / INDEX_FILE, compression="zstd")
        store.write_manifest(stage, producer="benchmarks/serving_benchmark.py", date=date,
                             extra={"files": files, "rows": table.num_rows, "top_n": top_n, "index": INDEX_FILE,
                                    "model_version": table.column("model_version")[0].as_py()})
    store.record_verdict(target, passed=True, result="benchmarks/serving_benchmark.py",
                         reason="synthetic benchmark lists: validate_topn was not run")
    store.publish(date, target, allow_older=True, extra={"rows": table.num_rows,
                                                          "model_version": table.column("model_version")[0].as_py()})
    return target


def build(root: Path, rebuild: bool) -> Storage:
    store = Storage.at(root)
    pointer = store.published()
    if pointer and pointer.get("rows") == SHAPE["users"] and not rebuild:
        return store
    started = time.perf_counter()
    write_version(store, synthetic_table(SHAPE["users"], SHAPE["items"], SHAPE["top_n"], DATE), DATE, SHAPE["top_n"])
    print(f"built a {SHAPE['users']:,} x top-{SHAPE['top_n']} version in {time.perf_counter() - started:.1f} s "
          f"under {store.root}", file=sys.stderr)
    return store


def load_breakdown(store: Storage, url: str) -> dict:
    """Where a load's CPU goes, on one thread: read the Parquet, encode the bodies (of which the
    float32 scores to text), frame the commands; then Redis alone storing the framed commands."""
    import pyarrow.compute as pc

    from nightly_topn.serving import encoding, redis_store
    from nightly_topn.storage import MANIFEST, read_json

    directory = store.root / store.published()["path"]
    version = store.published()["path"]
    cost = dict.fromkeys(("read", "scores_to_text", "bodies", "framing", "redis_store"), 0.0)
    commands = []
    for chunk in encoding.chunks(directory, read_json(directory / MANIFEST)["files"], version, redis_store.BATCH_ROWS):
        started = time.perf_counter()
        batch = encoding.read_chunk(chunk, version)
        cost["read"] += time.perf_counter() - started
        started = time.perf_counter()
        pc.cast(batch.column("scores"), pa.list_(pa.string()))
        cost["scores_to_text"] += time.perf_counter() - started
        started = time.perf_counter()
        encoding.bodies(batch, version)
        cost["bodies"] += time.perf_counter() - started
        started = time.perf_counter()
        commands.append(redis_store._hset_command("nightly_topn:breakdown", batch, version))
        cost["framing"] += time.perf_counter() - started  # includes a second bodies(): subtracted below
    cost["framing"] -= cost["bodies"]
    client = redis_store.connect(url)
    connection = client.connection_pool.get_connection()
    started = time.perf_counter()
    for command in commands:
        connection.send_packed_command(command, check_health=False)
        connection.read_response()
    cost["redis_store"] = time.perf_counter() - started
    client.connection_pool.release(connection)
    client.unlink("nightly_topn:breakdown")
    return cost


def measure_loads(store: Storage, url: str, loads: int) -> list[dict]:
    from nightly_topn.serving import redis_store

    results = []
    for i in range(loads):
        if i:  # a new version of the same lists, as the next night's publish would make it
            table = pq.read_table(store.root / store.published()["path"], schema=TOPN)
            write_version(store, table, DATE, SHAPE["top_n"])
        started = time.perf_counter()
        result = redis_store.load_published(url, root=store.root)
        seconds = time.perf_counter() - started
        results.append({"users": result["rows"], "seconds": seconds, "users_per_s": result["rows"] / seconds,
                        "removed": result["removed"]})
    return results


async def _client(host: str, port: int, token: str, users: list[str], count: int, seed: int) -> list[float]:
    """One keep-alive connection sending ``count`` requests one after the other; latencies in s."""
    rng = np.random.default_rng(seed)
    reader, writer = await asyncio.open_connection(host, port)
    latencies = []
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        for index in rng.integers(0, len(users), count):
            user = users[index]
            request = f"GET /v1/users/{user}/topn HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200") or f'"user_id":"{user}"'.encode() not in body[:64]:
                raise AssertionError(f"bad response for {user}: {head[:40]!r} {body[:120]!r}")
    finally:
        writer.close()
    return latencies


async def _load(host: str, port: int, token: str, users: list[str], clients: int, requests: int) -> dict:
    per_client = max(1, requests // clients)
    await asyncio.gather(*[_client(host, port, token, users, 50, 1000 + i) for i in range(clients)])  # warm-up
    started = time.perf_counter()
    runs = await asyncio.gather(*[_client(host, port, token, users, per_client, i) for i in range(clients)])
    seconds = time.perf_counter() - started
    latencies = np.array([x for run in runs for x in run]) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": seconds, "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def measure_service(backend: str, store: Storage, redis_url: str, concurrency: list[int], requests: int) -> list[dict]:
    token = secrets.token_urlsafe(32)
    env = {**os.environ, "NIGHTLY_TOPN_API_TOKEN": token, "NIGHTLY_TOPN_REDIS_URL": redis_url}
    from tools.local_service import LocalService

    users = user_ids(SHAPE["users"])
    with LocalService("--backend", backend, "--root", str(store.root), env=env) as service:
        return [{"backend": backend, **asyncio.run(_load("127.0.0.1", service.port, token, users, c, requests))}
                for c in concurrency]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(PROJECT / "var" / "bench" / "serving"))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per (backend, concurrency)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--backends", default="parquet,redis")
    args = parser.parse_args(argv)
    from tools.local_redis import LocalRedis

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    store = build(Path(args.root), args.rebuild)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    with LocalRedis() as server:
        loads = measure_loads(store, server.url, args.loads)
        breakdown = load_breakdown(store, server.url)
        service = [row for backend in args.backends.split(",")
                   for row in measure_service(backend, store, server.url, concurrency, args.requests)]
    print(f"\nRedis load, {SHAPE['users']:,} users x top-{SHAPE['top_n']} ({os.cpu_count()} cores, one run)")
    for i, load in enumerate(loads):
        what = "into an empty Redis" if i == 0 else "a new version replacing the live one"
        print(f"  load {i + 1} ({what}): {load['seconds']:.2f} s  {load['users_per_s']:>9,.0f} users/s")
    best = max(load["users_per_s"] for load in loads)
    print("  where the CPU goes (one thread, s): " + ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items())
          + f"  (bodies includes scores_to_text; total {sum(breakdown.values()) - breakdown['scores_to_text']:.2f})")
    print(f"\n{'backend':8s} {'clients':>7s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for row in service:
        print(f"{row['backend']:8s} {row['clients']:7d} {row['requests']:8d} {row['rps']:8,.0f} "
              f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f}")
    print("\ntargets")
    print(f"  Redis load >= 50,000 users/s (best of {len(loads)})   {best:9,.0f}  {'PASS' if best >= 50_000 else 'FAIL'}")
    for row in service:
        if row["clients"] == max(concurrency):
            ok = row["p99_ms"] <= 20 and row["rps"] >= 2000
            print(f"  {row['backend']:8s} {row['clients']} clients: p99 <= 20 ms and >= 2,000 req/s   "
                  f"{row['p99_ms']:.2f} ms, {row['rps']:,.0f} req/s  {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Versioned loads into a real redis-server (127.0.0.1, password): the load, the atomic switch
under concurrent readers, a rerun, a load killed half-way, and the one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from serving_helpers import DAY1, DAY2, day_version, publish_day2, published_root, redis_server  # noqa: F401

from nightly_topn.cli import main
from nightly_topn.lookup import TopNReader
from nightly_topn.serving import redis_store
from nightly_topn.serving.encoding import body_of
from nightly_topn.storage import Storage
from tools.local_airflow import free_port


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return published_root(tmp_path_factory, "redis-load")


@pytest.fixture
def client(redis_server):
    client = redis_store.connect(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def read(client, user_id: str):
    """What a reader gets: (live token, body) in one atomic step."""
    return client.eval(redis_store.READ_SCRIPT, 1, "nightly_topn:live", "nightly_topn:v:", user_id)


def all_keys(client) -> set[str]:
    return {key.decode() for key in client.keys("*")}


def token(version: str) -> str:
    return redis_store.token_of(version)


def test_load_switch_rerun_and_cleanup(root, client, redis_server):
    v1 = day_version(root, DAY1)
    first = redis_store.load_published(redis_server.url, root=root)
    reader = TopNReader(Storage.at(root).root / v1)
    users = [row["user_id"] for row in _rows(reader)]
    assert first["loaded"] and first["rows"] == len(users) == client.hlen(f"nightly_topn:v:{token(v1)}")
    live, body = read(client, users[0])
    assert live.decode() == token(v1)
    assert json.loads(body) == json.loads(body_of(reader.get(users[0]), v1))
    assert read(client, "nobody-at-all")[1] is None

    again = redis_store.load_published(redis_server.url, root=root)  # a rerun: nothing to write
    assert not again["loaded"] and again["removed"] == 0

    # The next day goes live while readers hammer Redis: every answer is a complete list of v1 or of v2.
    v2 = publish_day2(root)["path"]
    both = sorted(set(users) & {row["user_id"] for row in _rows(TopNReader(Storage.at(root).root / v2))})
    seen, problems, stop = set(), [], threading.Event()

    def hammer():
        reading = redis_store.connect(redis_server.url)
        while not stop.is_set():
            for user in both[:50]:
                live, body = read(reading, user)
                seen.add(live.decode())
                if body is None or json.loads(body)["version"] != "topn/" + live.decode():
                    problems.append((live, body))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        second = redis_store.load_published(redis_server.url, root=root)
    finally:
        time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join()
    assert second["loaded"] and second["removed"] == 1
    assert not problems, problems[:3]
    assert seen == {token(v1), token(v2)}
    # Nothing of v1 is left: only the live version's keys and the bookkeeping.
    assert all_keys(client) == {"nightly_topn:live", "nightly_topn:versions", f"nightly_topn:v:{token(v2)}",
                                f"nightly_topn:meta:{token(v2)}"}
    assert redis_store.live(client)["rows"] == second["rows"] == Storage.at(root).published()["rows"]


def _rows(reader: TopNReader) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(reader.directory, columns=["user_id"]).to_pylist()


KILLED_LOAD = """
import sys, time
from nightly_topn.serving import redis_store
real, calls = redis_store.read_chunk, []
def stalls_after_three(chunk, version):
    calls.append(chunk)
    if len(calls) > 3:
        print("STALLED", flush=True)
        time.sleep(600)
    return real(chunk, version)
redis_store.read_chunk = stalls_after_three
redis_store.load_published(sys.argv[1], root=sys.argv[2], batch_rows=32, lock_seconds=2)
"""


def test_a_load_killed_half_way_leaves_the_old_version_serving_and_the_next_load_cleans_up(tmp_path_factory,
                                                                                              client, redis_server):
    root = published_root(tmp_path_factory, "redis-killed")
    v1 = day_version(root, DAY1)
    redis_store.load_published(redis_server.url, root=root)
    v2 = publish_day2(root)["path"]
    env = {**os.environ, "NIGHTLY_TOPN_REDIS_URL": ""}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_LOAD, redis_server.url, str(root)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "STALLED"
        deadline = time.monotonic() + 30
        while client.hlen(f"nightly_topn:v:{token(v2)}") < 3 * 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        partial = client.hlen(f"nightly_topn:v:{token(v2)}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = Storage.at(root).published()["rows"]
    assert 0 < partial < rows  # really half-way: part of v2 is in Redis
    live, body = read(client, "u000001")
    assert live.decode() == token(v1) and json.loads(body)["version"] == v1  # the old version still serves

    result = redis_store.load_published(redis_server.url, root=root, lock_seconds=2)  # waits out the dead lock
    assert result["loaded"] and result["rows"] == rows == client.hlen(f"nightly_topn:v:{token(v2)}")
    assert all_keys(client) == {"nightly_topn:live", "nightly_topn:versions", f"nightly_topn:v:{token(v2)}",
                                f"nightly_topn:meta:{token(v2)}"}


def test_a_version_changed_after_its_gate_is_not_loaded(root, client, redis_server, tmp_path, capsys):
    """The loader, like publish, takes only a version whose gate verdict still matches it."""
    import shutil

    from nightly_topn.storage import MANIFEST, read_json, write_json

    changed = tmp_path / "data"
    shutil.copytree(root, changed)
    redis_store.load_published(redis_server.url, root=changed)
    before = all_keys(client)
    publish_day2(changed)
    v2 = Storage.at(changed).root / Storage.at(changed).published()["path"]
    write_json(v2 / MANIFEST, {**read_json(v2 / MANIFEST), "rows": 1})
    assert main(["load-redis", redis_server.url, "--root", str(changed)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nightly-topn: error: ") and "changed after validate_topn" in err, err
    assert all_keys(client) == before  # the old version serves on, nothing of v2 was written


@pytest.mark.parametrize("case", ["unreachable", "wrong password", "nothing published", "no url"])
def test_load_redis_errors_are_one_line(case, root, redis_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NIGHTLY_TOPN_REDIS_URL", raising=False)
    secret = redis_server.password
    args = {
        "unreachable": ["load-redis", f"redis://:{secret}@127.0.0.1:{free_port()}/0", "--root", str(root)],
        "wrong password": ["load-redis", f"redis://:not-{secret}@127.0.0.1:{redis_server.port}/0", "--root", str(root)],
        "nothing published": ["load-redis", redis_server.url, "--root", str(tmp_path / "empty")],
        "no url": ["load-redis", "--root", str(root)],
    }[case]
    expected = {"unreachable": "cannot reach Redis at redis://127.0.0.1:", "wrong password": "refused the credentials",
                "nothing published": "nothing is published under", "no url": "no Redis URL"}[case]
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("nightly-topn: error: ") and expected in lines[0], err
    assert secret not in err


def test_load_redis_cli_uses_the_environment_url(root, client, redis_server, capsys, monkeypatch):
    monkeypatch.setenv("NIGHTLY_TOPN_REDIS_URL", redis_server.url)
    assert main(["load-redis", "--root", str(root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loaded"] and client.get("nightly_topn:live").decode() == token(result["version"])

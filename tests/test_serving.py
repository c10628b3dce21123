"""The HTTP lookup service, run for real (``nightly-topn serve`` under uvicorn) and asked over HTTP:
bodies, auth, metrics, and swaps to new lists under concurrent requests for both backends."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serving_helpers import DAY1, DAY2, day_version, publish_day2, published_root, redis_server  # noqa: F401

from nightly_topn.lookup import TopNReader
from nightly_topn.schemas import TOPN
from nightly_topn.serving import redis_store
from nightly_topn.serving.encoding import bodies, body_of
from nightly_topn.storage import Storage
from tools.local_service import LocalService

TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return published_root(tmp_path_factory, "serving")


def env_for(root, **more) -> dict:
    return {**os.environ, "NIGHTLY_TOPN_ROOT": str(root), "NIGHTLY_TOPN_API_TOKEN": TOKEN, **more}


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def version_rows(root, version: str) -> dict[str, dict]:
    reader = TopNReader(Storage.at(root).root / version)
    return {u["user_id"]: reader.get(u["user_id"]) for u in pq.read_table(reader.directory, columns=["user_id"]).to_pylist()}


def test_arrow_bodies_are_the_bytes_of_the_per_row_encoder(root):
    version = day_version(root, DAY1)
    table = pq.read_table(Storage.at(root).root / version, schema=TOPN)
    reader = TopNReader(Storage.at(root).root / version)
    built = bodies(table.combine_chunks().to_batches()[0], version).to_pylist()
    assert len(built) == table.num_rows
    for user_id, body in zip(table.column("user_id").to_pylist(), built):
        assert body.encode() == body_of(reader.get(user_id), version)


def test_the_lazy_parquet_backend_answers_what_the_preloaded_one_does(root):
    from nightly_topn.serving.service import ParquetBackend

    preloaded, lazy = ParquetBackend(root), ParquetBackend(root, preload=False)
    assert preloaded.refresh() and lazy.refresh() and not lazy.refresh()  # the second: nothing new
    users = list(version_rows(root, day_version(root, DAY1))) + ["nobody-at-all"]

    async def answers(backend):
        return [(await backend.lookup(user))[1] for user in users]

    assert asyncio.run(answers(lazy)) == asyncio.run(answers(preloaded))
    assert asyncio.run(answers(lazy))[-1] is None


def test_ids_that_need_json_escaping_come_out_as_valid_json():
    ids = ['u"quote', "u\\back", "u\nline", "u\ttab", "ü-ok"]
    table = pa.table({"user_id": ids, "item_ids": [['i"1', "i\\2"]] * 5, "scores": [[0.5, 0.25]] * 5,
                      "source": ["model"] * 5, "model_version": ["m"] * 5,
                      "logical_date": pa.array([dt.date(2024, 3, 1)] * 5, pa.date32()), "arm": ["champion"] * 5},
                     schema=TOPN)
    out = [json.loads(b) for b in bodies(table.to_batches()[0], "topn/dt=2024-03-01/v=x").to_pylist()]
    assert [b["user_id"] for b in out] == ids and out[0]["items"] == ['i"1', "i\\2"] and out[0]["scores"] == [0.5, 0.25]


def test_the_service_refuses_to_start_without_a_token(root):
    env = {k: v for k, v in env_for(root).items() if k != "NIGHTLY_TOPN_API_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "nightly_topn.cli", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("nightly-topn: error: no API token: set $NIGHTLY_TOPN_API_TOKEN")


def test_auth_bodies_errors_and_metrics(root):
    version = day_version(root, DAY1)
    rows = version_rows(root, version)
    user = next(iter(rows))
    with LocalService(env=env_for(root)) as service, httpx.Client(base_url=service.url, timeout=10) as http:
        assert http.get(f"/v1/users/{user}/topn").status_code == 401
        wrong = http.get(f"/v1/users/{user}/topn", headers=auth("x" * 32))
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/metrics").status_code == 401
        health = http.get("/healthz")  # open, for probes
        assert health.status_code == 200 and health.json()["version"] == version

        answer = http.get(f"/v1/users/{user}/topn", headers=auth())
        assert answer.status_code == 200
        assert answer.json() == json.loads(body_of(rows[user], version))
        assert answer.json()["version"] == version and answer.json()["date"] == DAY1
        top3 = http.get(f"/v1/users/{user}/topn", params={"n": 3}, headers=auth()).json()
        assert top3["items"] == rows[user]["item_ids"][:3] and len(top3["scores"]) == 3
        unknown = http.get("/v1/users/nobody-at-all/topn", headers=auth())
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown user"
        assert http.get(f"/v1/users/{user}/topn", params={"n": "0"}, headers=auth()).status_code == 400
        assert http.get(f"/v1/users/{user}/topn", params={"n": "ten"}, headers=auth()).status_code == 400

        metrics = http.get("/metrics", headers=auth())
        assert metrics.status_code == 200
        text = metrics.text
        assert 'nightly_topn_serving_requests_total{route="topn",status="200"} 2.0' in text
        assert 'nightly_topn_serving_requests_total{route="topn",status="401"} 2.0' in text
        assert "nightly_topn_serving_request_duration_seconds_bucket" in text
        assert f'nightly_topn_serving_live_version_info{{backend="parquet",date="{DAY1}"' in text and version in text


def test_no_auth_is_for_local_use_only_when_asked(root):
    env = {k: v for k, v in env_for(root).items() if k != "NIGHTLY_TOPN_API_TOKEN"}
    with LocalService("--no-auth", env=env) as service:
        user = next(iter(version_rows(root, day_version(root, DAY1))))
        assert httpx.get(f"{service.url}/v1/users/{user}/topn").status_code == 200


async def _hammer(url: str, users: list[str], stop: asyncio.Event, seen: list) -> None:
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=10) as http:
        i = 0
        while not stop.is_set():
            user = users[i % len(users)]
            i += 1
            response = await http.get(f"/v1/users/{user}/topn")
            seen.append((user, response.status_code, response.content))


async def _across_a_switch(url: str, users: list[str], switch, new_version: str) -> list:
    """16 concurrent clients while ``switch()`` makes ``new_version`` live; stop once it is served."""
    stop, seen = asyncio.Event(), []
    clients = [asyncio.create_task(_hammer(url, users, stop, seen)) for _ in range(16)]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(switch)
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=10) as http:
        for _ in range(300):
            if (await http.get(f"/v1/users/{users[0]}/topn")).json()["version"] == new_version:
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    return seen


def check_consistent(seen: list, expected: dict[str, dict[str, dict]]) -> None:
    """Every answer is 200 and exactly one version's list of that user; both versions answered."""
    versions = set()
    for user, status, content in seen:
        assert status == 200, (user, status, content[:200])
        body = json.loads(content)
        versions.add(body["version"])
        assert body == json.loads(body_of(expected[body["version"]][user], body["version"])), (user, body["version"])
    assert versions == set(expected), versions


@pytest.mark.parametrize("backend", ["parquet", "redis"])
def test_concurrent_requests_across_a_publish_see_whole_versions(backend, tmp_path_factory, redis_server):
    root = published_root(tmp_path_factory, f"swap-{backend}")
    v1 = day_version(root, DAY1)
    v2 = day_version(root, DAY2)
    expected = {v1: version_rows(root, v1), v2: version_rows(root, v2)}
    users = sorted(set(expected[v1]) & set(expected[v2]))[:64]
    env = env_for(root, NIGHTLY_TOPN_REDIS_URL=redis_server.url)
    if backend == "redis":
        redis_store.load_published(redis_server.url, root=root)

    def switch():
        publish_day2(root)
        if backend == "redis":
            redis_store.load_published(redis_server.url, root=root)

    with LocalService("--backend", backend, "--poll-seconds", "0.2", env=env) as service:
        seen = asyncio.run(_across_a_switch(service.url, users, switch, v2))
        health = httpx.get(f"{service.url}/healthz").json()
        metrics = httpx.get(f"{service.url}/metrics", headers=auth()).text
    assert len(seen) > 200
    check_consistent(seen, expected)
    assert health["version"] == v2  # switched without a restart
    assert "nightly_topn_serving_swaps_total 1.0" in metrics


def test_lists_that_cannot_be_opened_leave_the_old_ones_serving(tmp_path_factory):
    root = published_root(tmp_path_factory, "broken-swap")
    v1 = day_version(root, DAY1)
    user = next(iter(version_rows(root, v1)))
    with LocalService("--poll-seconds", "0.2", env=env_for(root)) as service:
        v2 = publish_day2(root)["path"]
        for part in (Storage.at(root).root / v2).glob("part-*.parquet"):
            part.unlink()  # the new live version lost its files (an operator's mistake)
        metrics = ""
        for _ in range(100):
            metrics = httpx.get(f"{service.url}/metrics", headers=auth()).text
            if "nightly_topn_serving_refresh_errors_total 0.0" not in metrics:
                break
            time.sleep(0.1)
        answer = httpx.get(f"{service.url}/v1/users/{user}/topn", headers=auth())
    assert "nightly_topn_serving_refresh_errors_total 0.0" not in metrics
    assert answer.status_code == 200 and answer.json()["version"] == v1

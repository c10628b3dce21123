"""A private ``redis-server`` for tests and benchmarks: 127.0.0.1, a free port, a generated
password, no persistence; stopped (SIGTERM, then SIGKILL) on exit. Debian: ``apt-get install redis-server``.

    with LocalRedis() as server:
        os.environ["NIGHTLY_TOPN_REDIS_URL"] = server.url
"""
from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from tools.local_airflow import free_port


class LocalRedis:
    def __init__(self, *, password: str | None = None, port: int | None = None):
        self.password = password or secrets.token_urlsafe(24)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.workdir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> "LocalRedis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server; "
                               "scripts/install-system-test-deps.sh does it)")
        self.workdir = tempfile.mkdtemp(prefix="nightly-topn-redis-")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", self.password,
             "--save", "", "--appendonly", "no", "--dir", self.workdir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} at start-up")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{self.port} within 20 s")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM ``proc`` (one this code started), SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

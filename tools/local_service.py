"""``nightly-topn serve`` in its own process on 127.0.0.1 and a free port, for tests and
benchmarks: started, waited for (``/healthz`` answers 200), and stopped with SIGTERM."""
from __future__ import annotations

import subprocess
import sys
import time

import httpx

from tools.local_airflow import free_port
from tools.local_redis import stop_process


class LocalService:
    def __init__(self, *args: str, env: dict, timeout: float = 60):
        self.args, self.env, self.timeout = list(args), env, timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LocalService":
        self.proc = subprocess.Popen([sys.executable, "-m", "nightly_topn.cli", "serve", "--port", str(self.port),
                                      *self.args], env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nightly-topn serve {' '.join(self.args)} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"nightly-topn serve {' '.join(self.args)} did not answer /healthz in {self.timeout} s")

    def __exit__(self, *exc) -> None:
        stop_process(self.proc, grace=30)

"""A private ``dask.distributed`` cluster for tests and benchmarks: one scheduler and N worker
processes (one thread each, no nanny), all listening on 127.0.0.1 only, started with Dask's own
CLI as a deployment would, each stopped (SIGTERM, then SIGKILL) on exit.

    with LocalDask(workers=2) as cluster:
        beam_args = ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                     f"--dask_client_address={cluster.address}", "--scoring_threads=1"]

Worker logs go to ``cluster.log_path(i)``; a start-up failure quotes their tails.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.local_airflow import free_port
from tools.local_redis import stop_process


class LocalDask:
    def __init__(self, *, workers: int = 2, threads: int = 1, env: dict | None = None):
        self.workers, self.threads, self.env = workers, threads, env
        self.port = free_port()
        self.workdir: Path | None = None
        self.scheduler: subprocess.Popen | None = None
        self.worker_procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log_path(self, index: int) -> Path:
        return self.workdir / f"worker-{index}.log"

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        handle = open(log, "wb")
        try:
            return subprocess.Popen([sys.executable, "-m", "distributed.cli." + args[0], *args[1:]], env=self.env,
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.workdir)
        finally:
            handle.close()

    def start(self, timeout: float = 60) -> "LocalDask":
        self.workdir = Path(tempfile.mkdtemp(prefix="nightly-topn-dask-"))
        self.scheduler = self._spawn(["dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard", "--no-show"], self.workdir / "scheduler.log")
        for i in range(self.workers):  # one process each (no nanny): what the tests count is that process
            self.worker_procs.append(self._spawn(
                ["dask_worker", self.address, "--host", "127.0.0.1", "--nthreads", str(self.threads),
                 "--no-nanny", "--no-dashboard", "--memory-limit", "0", "--name", f"worker-{i}",
                 "--local-directory", str(self.workdir / f"w{i}")], self.log_path(i)))
        try:
            self._wait_for_workers(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_workers(self, timeout: float) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        for proc in [self.scheduler, *self.worker_procs]:
            if proc.poll() is not None:
                raise RuntimeError(f"a dask process exited with {proc.returncode} at start-up: {self.logs()}")
        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(self.workers, timeout=max(1.0, deadline - time.monotonic()))

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.worker_procs]

    def logs(self) -> str:
        if self.workdir is None:
            return ""
        return json.dumps({path.name: path.read_text(errors="replace")[-2000:] for path in self.workdir.glob("*.log")})

    def stop(self) -> None:
        for proc in self.worker_procs:
            stop_process(proc)
        stop_process(self.scheduler)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalDask":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

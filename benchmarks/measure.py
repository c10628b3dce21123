"""Run a command as a child process and measure it whole: wall seconds and the peak RSS of its
process tree (sampled every 20 ms, children included, so Beam workers and BLAS pools count)."""
from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes


def run_measured(cmd: list[str], env: dict | None = None, interval: float = 0.02) -> Measured:
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, done = [0], threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]))
            except psutil.Error:
                pass
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    return Measured(proc.returncode, stdout, stderr, time.perf_counter() - started, peak[0])

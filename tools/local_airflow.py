"""Development tooling: the environment a local Airflow needs to run this project, and a local
deployment to test it (not part of the installed package).

``airflow_env`` is what ``airflow dags test`` (the demo) needs. ``LocalAirflow`` starts the real
components one by one -- api-server, scheduler, dag-processor, triggerer -- with the
LocalExecutor, every listening socket bound to 127.0.0.1, a login required (Simple auth manager,
no anonymous admin), and a password and JWT secret generated at start-up (nothing secret is in
the repo). It stops each component with SIGTERM (then SIGKILL after a grace period) on its own
process group, so nothing is left running. ``airflow standalone`` is not used: it serves logs on
0.0.0.0 and leaves children behind on SIGTERM.

``LocalAirflow(..., executor="CeleryExecutor", workers=2)`` runs the CeleryExecutor instead: a
broker (a password-protected ``tools.local_redis.LocalRedis`` on 127.0.0.1, started here unless a
``broker_url`` is given), the Celery result backend in the metadata DB (``db+postgresql...``:
PostgreSQL is required, the workers write their results there concurrently), and N
``airflow celery worker`` components, each with its own Celery node name and its own task-instance
``hostname`` (``tools.airflow_hostname``), stopped first with a warm shutdown.

    python -m tools.local_airflow --workdir var/local-airflow   # from the repo root; Ctrl-C stops
    python -m tools.local_airflow --executor CeleryExecutor --workers 2
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAG_ID = "nightly_topn"
INGEST_POOL = "nightly_topn_ingest"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
LOCAL_EXECUTOR, CELERY_EXECUTOR = "LocalExecutor", "CeleryExecutor"
#: Set in each Celery worker's environment only: the worker's name, which its task instances report
#: as their ``hostname`` (``[core] hostname_callable`` = ``tools.airflow_hostname.worker_hostname``).
WORKER_HOSTNAME_ENV = "NIGHTLY_TOPN_WORKER_HOSTNAME"
HOSTNAME_CALLABLE = "airflow_hostname.worker_hostname"  # tools/ on the workers' PYTHONPATH
#: Seconds Redis waits for a worker to acknowledge a task before redelivering it: above the DAG's
#: 2 h ``execution_timeout`` (Airflow's default when unset is 24 h, with a warning at every start).
VISIBILITY_TIMEOUT = 3 * 3600


def airflow_cli() -> str:
    """The ``airflow`` executable of the running interpreter's environment (works without activating it)."""
    return str(Path(sys.executable).with_name("airflow"))


def airflow_env(airflow_home: str | os.PathLike, storage_root: str | os.PathLike, **overrides: str) -> dict[str, str]:
    """A copy of ``os.environ`` pointing Airflow at this project's DAGs and a private home/DB.

    ``storage_root``: a local path (made absolute) or an object-store URL such as
    ``s3://bucket/prefix`` (passed as is; the ``AWS_*`` variables go in ``overrides``)."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(Path(airflow_home).resolve()),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_DIR / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        GX_ANALYTICS_ENABLED="false",
        NIGHTLY_TOPN_ROOT=storage_root_text(storage_root),
    )
    env.update(overrides)
    return env


def storage_root_text(storage_root: str | os.PathLike) -> str:
    """``$NIGHTLY_TOPN_ROOT`` for ``storage_root``: a URL unchanged, a local path absolute."""
    text = str(storage_root)
    return text if "://" in text else str(Path(text).resolve())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(airflow_home, storage_root, *, api_port: int, user: str = "admin", password: str | None = None,
               parallelism: int = 2, database_url: str | None = None, executor: str = LOCAL_EXECUTOR,
               **overrides: str) -> tuple[dict[str, str], str]:
    """Environment for a local multi-component deployment; returns ``(env, password)``.

    Binding: the api-server on 127.0.0.1:``api_port``; the scheduler/triggerer log servers are not
    started (``--skip-serve-logs``: they would listen on all interfaces, and with the LocalExecutor
    the api-server reads task logs from the shared local log folder). Auth: Simple auth manager
    with one admin user whose password is generated now and written to a 0600 file in
    ``airflow_home`` (never in the repo); anonymous access is off.
    """
    home = Path(airflow_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(18)
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps({user: password}) + "\n")
    passwords_file.chmod(0o600)
    base = f"http://127.0.0.1:{api_port}"
    env = airflow_env(
        home, storage_root,
        AIRFLOW__CORE__EXECUTOR=executor,
        # PostgreSQL when given (what a deployment uses); else SQLite, waiting up to 60 s for a lock
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database_url or f"sqlite:///{home / 'airflow.db'}?timeout=60",
        AIRFLOW__CORE__PARALLELISM=str(parallelism),
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{user}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords_file),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__API__BASE_URL=base,
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API__EXPOSE_CONFIG="False",
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST="127.0.0.1",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="10",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="600",
        **overrides,
    )
    return env, password


def celery_env(*, broker_url: str, database_url: str, concurrency: int = 1) -> dict[str, str]:
    """The ``[celery]`` settings of every component (scheduler and workers alike).

    Broker: ``broker_url`` (Redis with a password). Result backend: the metadata DB, spelled out
    (``db+`` + the SQLAlchemy URL; the provider's fallback when unset is the same DB, but would
    rewrite a driverless ``postgresql://`` to psycopg v3, which is not installed here).
    """
    if database_url.startswith("sqlite"):
        raise ValueError("the CeleryExecutor needs a PostgreSQL (or MySQL) metadata DB: the workers write their "
                         "results into it concurrently and, on other hosts, could not reach a SQLite file")
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }


def worker_env(env: dict[str, str], name: str) -> dict[str, str]:
    """``env`` for the Celery worker ``name``: its task instances report ``name`` as their hostname
    (``tools/airflow_hostname.py``, importable as ``airflow_hostname`` from ``tools/`` alone: the repo
    root is not put on the workers' path)."""
    path = os.pathsep.join(p for p in (str(PROJECT_DIR / "tools"), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
            WORKER_HOSTNAME_ENV: name}


def component_command(name: str) -> list[str]:
    """The command line of one component (log servers skipped: see ``server_env``)."""
    airflow = [airflow_cli()]
    if name in ("scheduler", "triggerer"):
        return [*airflow, name, "--skip-serve-logs"]
    return [*airflow, name]


def worker_command(name: str, concurrency: int = 1) -> list[str]:
    """``airflow celery worker`` as the Celery node ``celery@NAME``; no log server (it would listen on
    all interfaces: ``airflow.utils.serve_logs`` binds ``[::]``/``0.0.0.0``, the host is not
    configurable, only ``[logging] worker_log_server_port`` is)."""
    return [airflow_cli(), "celery", "worker", "--celery-hostname", name,
            "--concurrency", str(concurrency), "--skip-serve-logs"]


class LocalPostgres:
    """A throw-away PostgreSQL server for the metadata DB: listens on a Unix socket only (no TCP at
    all), data and socket in a fresh temp folder, run as the ``postgres`` user when we are root."""

    BIN = Path("/usr/lib/postgresql")

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.dir = Path(tempfile.mkdtemp(prefix="nightly-topn-pg-"))
        self.port = 5432  # only names the socket file (.s.PGSQL.5432) in our private folder
        self.proc: subprocess.Popen | None = None
        self.url = f"postgresql+psycopg2://postgres@/airflow?host={self.dir}&port={self.port}"

    @classmethod
    def bindir(cls) -> Path | None:
        versions = sorted(cls.BIN.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                          if p.parent.parent.name.isdigit() else 0)
        return versions[-1].parent if versions else None

    @classmethod
    def available(cls) -> bool:
        try:  # Airflow's sync (psycopg2) and async (asyncpg) engines
            import asyncpg  # noqa: F401
            import psycopg2  # noqa: F401
        except ImportError:
            return False
        if cls.bindir() is None:
            return False
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return False
        return True

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def start(self, wait: float = 60) -> None:
        bindir = self.bindir()
        data = self.dir / "data"
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            subprocess.run(self._as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                           "-E", "UTF8", "--no-sync"]), check=True, stdout=log, stderr=subprocess.STDOUT,
                           cwd=self.dir, timeout=120)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._as_owner([str(bindir / "postgres"), "-D", str(data), "-k", str(self.dir), "-p", str(self.port),
                            "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200"]),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", str(self.dir), "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                subprocess.run([str(bindir / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                                "airflow"], check=True, capture_output=True, timeout=60)
                return
            time.sleep(0.5)
        raise TimeoutError(f"postgres not ready after {wait}s; log {self.log_path}")

    def processes(self) -> set[int]:
        if not self.proc:
            return set()
        return {pid for pid in _in_group_or_session({self.proc.pid}) if _is_running(pid)}

    def stop(self, grace: float = 30) -> int | None:
        """SIGINT = PostgreSQL's "fast" shutdown; SIGKILL after ``grace``; the temp folder is removed."""
        code = None
        if self.proc and self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGINT)
            try:
                code = self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                code = self.proc.wait(timeout=10)
        elif self.proc:
            code = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


class LocalAirflow:
    """A real, local Airflow 3: ``with LocalAirflow(workdir, storage_root) as af: af.api(...)``.

    ``executor="CeleryExecutor"``: plus ``workers`` Celery workers named ``worker-1``, ``worker-2``...
    (``concurrency`` task slots each), the broker at ``broker_url`` (else a ``LocalRedis`` started
    and stopped here), the result backend in the metadata DB (PostgreSQL: ``database`` must not be
    ``sqlite``; ``auto`` fails when no PostgreSQL is installed).
    """

    def __init__(self, workdir, storage_root, *, parallelism: int = 2, components=COMPONENTS,
                 database: str = "auto", executor: str = LOCAL_EXECUTOR, workers: int = 2, concurrency: int = 1,
                 broker_url: str | None = None, **overrides: str):
        if executor not in (LOCAL_EXECUTOR, CELERY_EXECUTOR):
            raise ValueError(f"executor {executor!r}: expected {LOCAL_EXECUTOR} or {CELERY_EXECUTOR}")
        self.workdir = Path(workdir).resolve()
        self.home = self.workdir / "airflow"
        self.logs = self.workdir / "component-logs"
        self.port = free_port()
        self.executor = executor
        if database == "auto":
            if executor == CELERY_EXECUTOR and not LocalPostgres.available():
                raise RuntimeError("the CeleryExecutor needs PostgreSQL: no server binaries under "
                                   f"{LocalPostgres.BIN} (or no psycopg2/asyncpg, or no postgres user)")
            database = "postgres" if LocalPostgres.available() else "sqlite"
        self.database = database
        self.postgres = LocalPostgres(self.workdir / "component-logs" / "postgres.log") if database == "postgres" else None
        self.redis = None  # the broker when started here
        self.workers: tuple[str, ...] = ()
        self.concurrency = concurrency
        if executor == CELERY_EXECUTOR:
            if not self.postgres:
                raise ValueError("the CeleryExecutor needs database='postgres' (the Celery result backend)")
            if broker_url is None:
                from tools.local_redis import LocalRedis  # (imports this module)

                self.redis = LocalRedis()
                broker_url = self.redis.url
            self.workers = tuple(f"worker-{i}" for i in range(1, workers + 1))
            overrides = {**celery_env(broker_url=broker_url, database_url=self.postgres.url,
                                      concurrency=concurrency), **overrides}
        self.broker_url = broker_url
        self.env, self.password = server_env(self.home, storage_root, api_port=self.port, parallelism=parallelism,
                                             database_url=self.postgres.url if self.postgres else None,
                                             executor=executor, **overrides)
        self.user = "admin"
        self.url = f"http://127.0.0.1:{self.port}"
        self.components = tuple(components)
        self.procs: dict[str, subprocess.Popen] = {}
        self._seen: set[tuple[int, float | None]] = set()  # (pid, start time): PIDs get reused
        self._token: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``airflow ARGS`` against this deployment (same env, same DB)."""
        result = subprocess.run([airflow_cli(), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, wait: float = 180) -> "LocalAirflow":
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.postgres:
            self.postgres.start()
        if self.redis:
            self.redis.start()
        self.cli("db", "migrate")
        self.cli("pools", "set", INGEST_POOL, "1", "Serialises ingest across concurrent runs (one writer of raw/)")
        for name in self.components:
            self._launch(name, component_command(name), self.env)
        for name in self.workers:
            self._launch(name, worker_command(name, self.concurrency), worker_env(self.env, name))
        deadline = time.monotonic() + wait
        healthy = False
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                healthy = healthy or httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).is_success
            except httpx.TransportError:
                pass
            if healthy and all(self.worker_ready(name) for name in self.workers):
                return self
            time.sleep(1)
        not_ready = [name for name in self.workers if not self.worker_ready(name)]
        waiting = f"Celery workers {not_ready}" if healthy else "api-server"
        raise TimeoutError(f"{waiting} not ready after {wait}s (api {self.url}); logs in {self.logs}")

    def _launch(self, name: str, command: list[str], env: dict[str, str]) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir)

    def worker_ready(self, name: str) -> bool:
        """Celery logged ``celery@NAME ready.``: the worker consumes from the broker."""
        log = self.logs / f"{name}.log"
        return log.is_file() and f"celery@{name} ready." in log.read_text(errors="replace")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def stop(self, grace: float = 30) -> dict[str, int | None]:
        """Celery workers first: SIGTERM to each worker's main process = Celery's warm shutdown
        (running tasks finish while the api-server can still take their results), then SIGTERM
        each other component's process group; wait ``grace`` each time, SIGKILL what is left
        (process groups), stop the broker if started here and PostgreSQL; returns exit codes."""
        self.processes()  # remember every process of the deployment before they get reparented
        workers = {name: proc for name, proc in self.procs.items() if name in self.workers}
        others = {name: proc for name, proc in self.procs.items() if name not in self.workers}
        codes = {}
        for group, signal_it in ((workers, _signal_main), (others, _signal_group)):
            for proc in group.values():
                signal_it(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for name, proc in group.items():
                try:
                    codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    codes[name] = None
        for proc in self.procs.values():  # children (task supervisors, pool processes, uvicorn workers...)
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.leftovers(postgres=False):  # a task process that left the group (all started by us)
            if pid <= 1 or pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.redis:
            self.redis.stop()
            codes["redis"] = self.redis.proc.returncode if self.redis.proc else None
        if self.postgres:  # last: the components needed it until they were gone
            codes["postgres"] = self.postgres.stop()
        return codes

    def leftovers(self, *, postgres: bool = True) -> list[int]:
        """Live processes of this deployment: the components, their descendants, anything in their
        process groups/sessions, anything whose environment names this AIRFLOW_HOME, anything
        seen as such while running (``processes()`` snapshots), and the PostgreSQL server's unless
        ``postgres=False`` (nor the broker started here). Celery workers are components: their
        pool processes and task supervisors are their descendants. Should be empty after ``stop``."""
        current = self.processes()
        seen_alive = {pid for pid, started in self._seen if _start_time(pid) == started}
        if self.postgres and postgres:
            current |= self.postgres.processes()
        if self.redis and self.redis.proc and postgres:
            current |= {pid for pid in _in_group_or_session({self.redis.proc.pid}) if _is_running(pid)}
        return sorted(current | seen_alive)

    def processes(self) -> set[int]:
        roots = {proc.pid for proc in self.procs.values()}
        found = _in_group_or_session(roots) | _processes_with_env("AIRFLOW_HOME", str(self.home))
        for pid in roots | set(found):
            try:
                found |= {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
            except psutil.Error:
                continue
        found = {pid for pid in found if _is_running(pid)}
        self._seen |= {(pid, _start_time(pid)) for pid in found}
        return found

    def listening_sockets(self) -> set[tuple[str, int]]:
        """``(address, port)`` of every TCP socket the deployment's processes listen on."""
        import ipaddress

        found = set()
        for pid in self.processes():
            try:
                sockets = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for sock in sockets:
                if sock.status == psutil.CONN_LISTEN:
                    address = ipaddress.ip_address(sock.laddr.ip)
                    found.add((str(getattr(address, "ipv4_mapped", None) or address), sock.laddr.port))
        return found

    def __enter__(self) -> "LocalAirflow":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST API ----------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            response = httpx.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password},
                                     timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs):
        """Call ``/api/v2{path}`` with a bearer token; returns the JSON body."""
        response = httpx.request(method, f"{self.url}/api/v2{path}", timeout=60,
                                    headers={"Authorization": f"Bearer {self.token()}"}, **kwargs)
        if response.status_code not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str = DAG_ID, timeout: float = 180) -> dict:
        """Wait until the dag-processor has parsed ``dag_id`` (and report import errors early)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            errors = self.api("GET", "/importErrors")
            if errors.get("total_entries"):
                raise RuntimeError(f"DAG import errors: {json.dumps(errors)[:3000]}")
            dags = self.api("GET", "/dags", params={"dag_id_pattern": dag_id})
            if any(d["dag_id"] == dag_id for d in dags.get("dags", [])):
                return self.api("GET", f"/dags/{dag_id}")
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s; logs in {self.logs}")

    def wait_for_runs(self, run_ids, dag_id: str = DAG_ID, timeout: float = 900) -> dict[str, dict]:
        """Wait until every run in ``run_ids`` reached success/failed; returns them by id."""
        pending, done = set(run_ids), {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            self.check_alive()
            for run_id in sorted(pending):
                run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
                if run["state"] in ("success", "failed"):
                    done[run_id] = run
                    pending.discard(run_id)
            if pending:
                time.sleep(3)
        if pending:
            raise TimeoutError(f"runs still not finished after {timeout}s: {sorted(pending)}; logs in {self.logs}")
        return done


def _signal_main(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to ``proc`` alone (a Celery worker's main process handles its pool's shutdown)."""
    if proc.pid > 1 and proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.pid <= 1:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _in_group_or_session(leaders: set[int]) -> set[int]:
    """Processes whose process group or session is led by one of ``leaders``."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in leaders or os.getsid(proc.pid) in leaders:
                found.add(proc.pid)
        except OSError:
            continue
    return found


def _processes_with_env(key: str, value: str) -> set[int]:
    found = set()
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(key) == value and _is_running(proc.pid):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a local, login-protected Airflow for this project on 127.0.0.1.")
    parser.add_argument("--workdir", default="var/local-airflow")
    parser.add_argument("--root", help="storage root (default: WORKDIR/data)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--executor", choices=(LOCAL_EXECUTOR, CELERY_EXECUTOR), default=LOCAL_EXECUTOR)
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (CeleryExecutor)")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    af = LocalAirflow(work, args.root or work / "data", parallelism=args.parallelism, executor=args.executor,
                      workers=args.workers)
    with af:
        print(f"Airflow UI: {af.url}  user: {af.user}  password: see {af.home / 'passwords.json'}", flush=True)
        print(f"component logs: {af.logs}; Ctrl-C stops every component", flush=True)
        try:
            while True:
                af.check_alive()
                time.sleep(5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

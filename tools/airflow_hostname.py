"""``[core] hostname_callable`` for several Celery workers on one machine (development tooling).

Airflow 3 records a task instance's ``hostname`` from the process that supervises the task: the
Task SDK's ``airflow.sdk.api.client.get_hostname()`` calls ``[core] hostname_callable`` (default:
the FQDN) when it tells the Execution API the task started, and on every heartbeat. Workers on
one machine would all report the same FQDN; ``tools.local_airflow.LocalAirflow`` sets
``AIRFLOW__CORE__HOSTNAME_CALLABLE=tools.airflow_hostname.worker_hostname`` and
``NIGHTLY_TOPN_WORKER_HOSTNAME=<the worker's name>`` in each Celery worker's environment only, so
each task instance names the worker that ran it. On real hosts, leave the default (the FQDN).
"""
from __future__ import annotations

import os
import socket

ENV = "NIGHTLY_TOPN_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """``$NIGHTLY_TOPN_WORKER_HOSTNAME``, else the FQDN (Airflow's default)."""
    return os.environ.get(ENV) or socket.getfqdn()

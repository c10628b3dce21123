"""The environment a local Airflow needs to run this project (used by the demo and the tests)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def airflow_env(airflow_home: str | os.PathLike, storage_root: str | os.PathLike, **overrides: str) -> dict[str, str]:
    """A copy of ``os.environ`` pointing Airflow at this project's DAGs and a private home/DB."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(Path(airflow_home).resolve()),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_DIR / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        GX_ANALYTICS_ENABLED="false",
        NIGHTLY_TOPN_ROOT=str(Path(storage_root).resolve()),
    )
    env.update(overrides)
    return env

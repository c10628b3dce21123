"""Development tooling (make demo): the main job on the embedded default data: the daily DAG under ``airflow dags test`` for a few
consecutive days, then where everything is and a sample lookup.

    python -m tools.demo [--first 2024-03-02] [--days 3] [--workdir var]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from tools.local_airflow import airflow_cli, airflow_env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", default="2024-03-02", help="first logical date (processes the day before)")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--workdir", default="var")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    env = airflow_env(work / "airflow", work / "data")
    subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    first = dt.date.fromisoformat(args.first)
    for offset in range(args.days):
        logical = (first + dt.timedelta(days=offset)).isoformat()
        started = time.perf_counter()
        log = work / "logs" / f"dags-test-{logical}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            code = subprocess.run([airflow_cli(), "dags", "test", "nightly_topn", logical], env=env, stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        print(f"airflow dags test nightly_topn {logical}: {'ok' if code == 0 else 'FAILED'} "
              f"in {time.perf_counter() - started:.0f}s (log: {log})", flush=True)
        if code:
            return code

    from nightly_topn.lookup import TopNReader
    from nightly_topn.storage import Storage

    store = Storage.at(work / "data")
    pointer = store.published()
    reader = TopNReader.published(store.root)
    sample = reader.get(reader.index[0][0])
    print(f"\nstorage root:   {store.root}")
    print(f"published:      {json.dumps(pointer)}")
    print(f"reports:        {store.root / 'reports'}")
    print(f"airflow home:   {env['AIRFLOW_HOME']}")
    print(f"sample lookup:  nightly-topn lookup {sample['user_id']} --root {store.root}")
    print(json.dumps({**sample, "item_ids": sample["item_ids"][:5], "scores": sample["scores"][:5]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

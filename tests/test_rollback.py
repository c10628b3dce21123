"""Rollback: the previous good lists back on the air in one step, recorded, and not silently undone."""
import json

import pytest

from nightly_topn.storage import MANIFEST, Storage


def _version(store, date, name, *, model="m1", gate=True):
    """A complete, gate-passed top-N version as the topn job leaves it (manifest with model and rows)."""
    target = store.partition("topn", date) / name
    with store.staged(target) as stage:
        store.write_manifest(stage, producer="topn", date=date,
                             extra={"files": [], "model_version": model, "rows": 7})
    if gate:
        store.record_verdict(target, passed=True, result="r.json")
    return target


def _published(root):
    from nightly_topn.jobs.publish import publish

    store = Storage.at(root)
    first, second = _version(store, "2024-03-01", "v=1", model="good"), _version(store, "2024-03-02", "v=1", model="bad")
    publish("2024-03-01", root=root, version=str(first))
    publish("2024-03-02", root=root, version=str(second))
    return store, first, second


def test_rollback_restores_the_previous_lists_and_records_why(root):
    from nightly_topn.alerts import read_alerts
    from nightly_topn.jobs.rollback import rollback

    store, first, second = _published(root)
    pointer = rollback(root=root, reason="complaints about 03-02", by="oncall")
    live = store.published()
    assert live == pointer
    assert (live["path"], live["model_version"], live["rolled_back_from"]) == \
        ("topn/dt=2024-03-01/v=1", "good", "topn/dt=2024-03-02/v=1")
    assert [e["action"] for e in store.pointer_history()] == ["publish", "publish", "rollback"]
    assert store.pointer_history()[-1]["rolled_back_by"] == "oncall"
    alert, = [a for a in read_alerts(root) if a["error_type"] == "Rollback"]
    assert "complaints about 03-02" in alert["reason"] and alert["date"] == "2024-03-02"


def test_a_rolled_back_version_is_never_published_again(root):
    from nightly_topn.errors import PublishRefused
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.rollback import rollback

    store, first, second = _published(root)
    rollback(root=root, reason="bad model")
    with pytest.raises(PublishRefused, match="a rollback took it off the air"):
        publish("2024-03-02", root=root, version=str(second))
    assert store.published()["path"] == "topn/dt=2024-03-01/v=1"
    # a rerun of the date makes a new version, which goes live once its gate passed
    publish("2024-03-02", root=root, version=str(_version(store, "2024-03-02", "v=2", model="fixed")))
    assert store.published()["model_version"] == "fixed"


def test_rollback_skips_versions_that_are_gone_or_changed(root):
    from nightly_topn.errors import MissingPartition
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.rollback import rollback

    store, first, second = _published(root)
    third = _version(store, "2024-03-03", "v=1", model="third")
    publish("2024-03-03", root=root, version=str(third))
    store.write_manifest(second, producer="topn", date="2024-03-02", extra={"files": ["x"], "model_version": "bad",
                                                                          "rows": 7})  # changed after its gate
    assert rollback(root=root, reason="x")["path"] == "topn/dt=2024-03-01/v=1"
    with pytest.raises(MissingPartition, match="no earlier published version to roll back to"):
        rollback(root=root, reason="again")  # 03-01 is the oldest; 03-03 was rolled back from
    assert store.published()["path"] == "topn/dt=2024-03-01/v=1"


def test_publish_keeps_the_version_a_rollback_would_return_to(root):
    from nightly_topn.jobs.publish import KEEP_VERSIONS, publish
    from nightly_topn.jobs.rollback import rollback

    store = Storage.at(root)
    publish("2024-03-01", root=root, version=str(_version(store, "2024-03-01", "v=0")))
    for i in range(1, KEEP_VERSIONS + 2):  # reruns of the date that were checked but not published
        _version(store, "2024-03-01", f"v={i}")
    publish("2024-03-01", root=root, version=str(_version(store, "2024-03-01", f"v={KEEP_VERSIONS + 2}")))
    names = [v.name for v in store.versions("2024-03-01")]
    assert "v=0" in names and "v=1" not in names  # old reruns tidied away, the previous live one kept
    assert rollback(root=root, reason="x")["path"] == "topn/dt=2024-03-01/v=0"


def test_cli_rollback_prints_the_pointer_or_one_line(root, capsys):
    from nightly_topn.cli import main

    assert main(["rollback", "--reason", "nothing yet", "--root", str(root)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("nightly-topn: error:") and "nothing is published" in err and len(err.splitlines()) == 1
    _published(root)
    assert main(["rollback", "--reason", "bad lists", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == "topn/dt=2024-03-01/v=1"
    assert (Storage.at(root).root / "topn/dt=2024-03-01/v=1" / MANIFEST).is_file()


def test_rollback_dag_is_manual_typed_and_emits_the_lists_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["nightly_topn_rollback"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # by hand only, never scheduled
    reason = dag.params.get_param("reason")
    assert reason.schema["type"] == "string" and reason.schema["minLength"] >= 3
    with pytest.raises(Exception, match="reason|short|minLength"):
        reason.resolve("")
    task, = dag.tasks
    assert [o.name for o in task.outlets] == ["nightly_topn_lists"]

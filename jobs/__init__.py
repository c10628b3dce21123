"""The jobs of a daily run, in order. Each is a plain function ``job(date, *, root, params, ...)``
that an Airflow task calls and a person can run by hand (``nightly-topn JOB --date D``)."""


def steps():
    """``[(name, function)]`` in run order (imported lazily: DAG parsing must stay light)."""
    from nightly_topn.jobs.evaluate import evaluate
    from nightly_topn.jobs.ingest import ingest
    from nightly_topn.jobs.preprocess import preprocess
    from nightly_topn.jobs.publish import publish
    from nightly_topn.jobs.topn import topn
    from nightly_topn.jobs.train import train
    from nightly_topn.jobs.validate import validate_features, validate_raw, validate_topn

    return [("ingest", ingest), ("validate", validate_raw), ("preprocess", preprocess),
            ("validate_features", validate_features), ("train", train), ("evaluate", evaluate), ("topn", topn),
            ("validate_topn", validate_topn), ("publish", publish)]

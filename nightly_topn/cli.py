"""``nightly-topn``: run any job by hand, a whole day, or look up a user's list.

    nightly-topn ingest --date 2024-03-01 [--root DIR] [--source SPEC] [--top-n 20 ...]
    nightly-topn run --date 2024-03-01          # every job of the day, in order
    nightly-topn lookup u000042 [--date D]      # one user's published list (JSON)
    nightly-topn export lists.jsonl [--format jsonl|tsv] [--date D]   # every list, for a KV store
    nightly-topn load-redis [URL]               # the live lists into Redis (URL: $NIGHTLY_TOPN_REDIS_URL)
    nightly-topn rollback --reason "..."        # the previous published lists back on the air
    nightly-topn serve [--port 8080] [--backend parquet|redis]   # HTTP lookups ($NIGHTLY_TOPN_API_TOKEN)

Every knob is checked against its bounds (``nightly_topn.config.RunParams``) before any work
starts. A failure prints one line naming the problem (``nightly-topn: error: ...``) and exits
non-zero; ``--debug`` also prints the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from nightly_topn.config import RunParams

log = logging.getLogger("nightly_topn.cli")


def _add_params(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD (the day whose data is processed)")
    parser.add_argument("--root", help="storage root (default $NIGHTLY_TOPN_ROOT or ./var/data)")
    if name in ("ingest", "run"):
        parser.add_argument("--source", help="data source spec (default $NIGHTLY_TOPN_SOURCE or 'generated')")
    if name in ("validate_topn", "publish", "validate_similar", "publish_similar"):
        parser.add_argument("--version", help="the version (topn/dt=D/v=... or similar/dt=D/v=...) to check or "
                                              "publish (default: the date's newest)")
    for field in dataclasses.fields(RunParams):
        metavar = "BOOL" if field.type in ("bool", bool) else None
        # Values stay strings here: RunParams validates and converts them, with its bounds.
        parser.add_argument("--" + field.name.replace("_", "-"), default=None, metavar=metavar,
                            help=f"default {field.default}")


def _print_error(exc: Exception) -> None:
    lines = str(exc).splitlines() or [type(exc).__name__]
    detail = [line for line in lines[1:] if line.lstrip().startswith(("[HARD]", "result:"))]
    print("nightly-topn: error: " + "\n  ".join([lines[0], *[d.strip() for d in detail]]), file=sys.stderr)


def main(argv=None) -> int:
    from nightly_topn.errors import NightlyTopNError
    from nightly_topn.jobs import steps

    parser = argparse.ArgumentParser(prog="nightly-topn", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level, with tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, _ in steps():
        _add_params(sub.add_parser(name, help=f"run the {name} job for one date"), name)
    _add_params(sub.add_parser("run", help="run every job of one date in order"), "run")
    look = sub.add_parser("lookup", help="print one user's published top-N (or, with --item, an item's similar "
                                         "items) as JSON")
    look.add_argument("user_id", nargs="?", help="the user whose list to print")
    look.add_argument("--item", help="print this item's published similar items instead")
    look.add_argument("--date", help="a given date's (gated) lists instead of the live ones")
    look.add_argument("--root")
    export = sub.add_parser("export", help="write every published list to a file (bulk load of a KV store)")
    export.add_argument("out", help="output file ('-' for stdout)")
    export.add_argument("--format", choices=["jsonl", "tsv"], default="jsonl")
    export.add_argument("--date", help="a given date's (gated) lists instead of the live ones")
    export.add_argument("--root")
    back = sub.add_parser("rollback", help="move the published pointer back to the previous good version")
    back.add_argument("--reason", required=True, help="why (recorded in the pointer history and the alert)")
    back.add_argument("--root")
    _add_serving(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except NightlyTopNError as exc:
        log.debug("%s", type(exc).__name__, exc_info=True)
        _print_error(exc)
        return exc.exit_code


def _add_serving(sub) -> None:
    load = sub.add_parser("load-redis", help="load the live lists into Redis as a new version and switch to it")
    load.add_argument("url", nargs="?", help="redis://:PASSWORD@HOST:PORT/DB (default $NIGHTLY_TOPN_REDIS_URL; "
                                             "prefer the variable: a command line is visible to other users)")
    load.add_argument("--root")
    load.add_argument("--prefix", default="nightly_topn", help="key prefix (default nightly_topn)")
    serve = sub.add_parser("serve", help="HTTP lookups of the live lists (token: $NIGHTLY_TOPN_API_TOKEN)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--backend", choices=["parquet", "redis"], default="parquet",
                       help="parquet: the published files (default); redis: $NIGHTLY_TOPN_REDIS_URL")
    serve.add_argument("--root")
    serve.add_argument("--prefix", default=None, help="Redis key prefix (default nightly_topn)")
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new lists")
    serve.add_argument("--no-auth", action="store_true", help="serve without a token (local use only)")
    serve.add_argument("--lazy", action="store_true", help="parquet backend: read row groups on demand instead "
                                                           "of holding every list in memory (slower)")
    serve.add_argument("--access-log", action="store_true")


def _dispatch(args) -> int:
    from nightly_topn.jobs import preflight, run_day, run_job
    from nightly_topn.storage import as_date

    if args.command == "rollback":
        from nightly_topn.jobs.rollback import rollback

        print(json.dumps(rollback(root=args.root, reason=args.reason)))
        return 0
    if args.command == "load-redis":
        from nightly_topn.serving.redis_store import load_published

        print(json.dumps(load_published(args.url, root=args.root, prefix=args.prefix)))
        return 0
    if args.command == "serve":
        from nightly_topn.serving.service import serve

        serve(args.host, args.port, backend=args.backend, root=args.root, no_auth=args.no_auth,
              poll_seconds=args.poll_seconds, redis_prefix=args.prefix, preload=not args.lazy,
              access_log=args.access_log)
        return 0
    if args.command == "lookup":
        from nightly_topn.errors import ConfigError
        from nightly_topn.lookup import lookup, lookup_similar

        if (args.user_id is None) == (args.item is None):
            raise ConfigError("lookup takes a user id, or --item ITEM_ID for an item's similar items (not both)")
        date = args.date and as_date(args.date)
        row = lookup_similar(args.item, root=args.root, date=date) if args.item else \
            lookup(args.user_id, root=args.root, date=date)
        print(json.dumps(row, indent=2))
        return 0 if row else 1
    if args.command == "export":
        from nightly_topn.lookup import export as export_lists

        count = export_lists(sys.stdout if args.out == "-" else args.out, root=args.root,
                             date=args.date and as_date(args.date), fmt=args.format)
        print(json.dumps({"exported": count, "out": args.out}), file=sys.stderr)
        return 0
    date = as_date(args.date)
    params = RunParams.from_mapping(vars(args), flags=True)
    if args.command == "run":
        results = run_day(date, root=args.root, source=args.source, params=params)  # preflight first
    else:
        preflight(params)
        kwargs = {k: getattr(args, k) for k in ("source", "version") if getattr(args, k, None) is not None}
        results = [(args.command, run_job(args.command, date, root=args.root, params=params, **kwargs))]
    for name, result in results:
        print(json.dumps({"job": name, "result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

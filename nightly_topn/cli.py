"""``nightly-topn``: run any job by hand, a whole day, or look up a user's list.

    nightly-topn ingest --date 2024-03-01 [--root DIR] [--source SPEC] [--top-n 20 ...]
    nightly-topn run --date 2024-03-01          # every job of the day, in order
    nightly-topn lookup u000042 [--date D]      # one user's published list (JSON)
    nightly-topn export lists.jsonl [--format jsonl|tsv] [--date D]   # every list, for a KV store
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from nightly_topn.config import RunParams


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD (the day whose data is processed)")
    parser.add_argument("--root", help="storage root (default $NIGHTLY_TOPN_ROOT or ./var/data)")
    parser.add_argument("--source", help="data source spec (default $NIGHTLY_TOPN_SOURCE or 'generated')")
    for field in dataclasses.fields(RunParams):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=None,
                                metavar="BOOL", help=f"default {field.default}")
        else:
            kind = {"int": int, "float": float}.get(field.type, str)
            parser.add_argument(flag, type=kind, default=None, help=f"default {field.default}")


def _call(name, func, args, params, extra):
    kwargs = {"root": args.root, "params": params}
    if name == "ingest":
        kwargs["source"] = args.source
    if name == "topn" and extra:
        kwargs["beam_args"] = extra
    return func(args.date, **kwargs)


def main(argv=None) -> int:
    from nightly_topn.jobs import steps

    parser = argparse.ArgumentParser(prog="nightly-topn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, _ in steps():
        _add_params(sub.add_parser(name, help=f"run the {name} job for one date"))
    _add_params(sub.add_parser("run", help="run every job of one date in order"))
    look = sub.add_parser("lookup", help="print one user's published top-N as JSON")
    look.add_argument("user_id")
    look.add_argument("--date", help="a given date's lists instead of the live ones")
    look.add_argument("--root")
    export = sub.add_parser("export", help="write every published list to a file (bulk load of a KV store)")
    export.add_argument("out", help="output file ('-' for stdout)")
    export.add_argument("--format", choices=["jsonl", "tsv"], default="jsonl")
    export.add_argument("--date", help="a given date's lists instead of the live ones")
    export.add_argument("--root")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "lookup":
        from nightly_topn.lookup import lookup

        row = lookup(args.user_id, root=args.root, date=args.date)
        print(json.dumps(row, indent=2))
        return 0 if row else 1
    if args.command == "export":
        from nightly_topn.lookup import export as export_lists

        count = export_lists(sys.stdout if args.out == "-" else args.out, root=args.root, date=args.date,
                             fmt=args.format)
        print(json.dumps({"exported": count, "out": args.out}), file=sys.stderr)
        return 0
    if extra and args.command not in ("topn", "run"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    params = RunParams.from_mapping(vars(args))
    jobs = steps() if args.command == "run" else [(n, f) for n, f in steps() if n == args.command]
    for name, func in jobs:
        result = _call(name, func, args, params, extra)
        print(json.dumps({"job": name, "result": result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

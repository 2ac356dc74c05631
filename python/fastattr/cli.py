"""The ``fastattr`` command: ``fastattr bench [...]`` (and ``fastattr report``).

Errors a person can act on print one line and exit non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

BENCHES: dict[str, str] = {"sparsemax": "fastattr.bench.sparsemax"}


class UserError(Exception):
    """An error caused by the command line or the user's files: shown as one line."""


def _bench(args: argparse.Namespace) -> int:
    import importlib

    from .bench import write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(BENCHES) if args.which == "all" else [args.which]
    tables = []
    for name in names:
        module = importlib.import_module(BENCHES[name])
        for table in module.default_tables(device=args.device, repeat=args.repeat):
            print(table.render(), flush=True)
            print()
            tables.append(table)
    if args.out:
        try:
            path = write_results(tables, args.out, tables[0].params.get("device", "cpu"), tag=args.which)
        except OSError as e:
            raise UserError(f"cannot write results to {args.out}: {e.strerror or e}") from e
        print(f"results written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastattr", description="Fast feature attribution and its evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time fastattr against its references and peer libraries")
    bench.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median reported)")
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    bench.add_argument("--out", default=None, help="folder for the JSON record (e.g. benchmarks/results)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"fastattr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

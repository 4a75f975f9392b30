"""The ``ipledger`` command: one entry point, a sub-command per job.

Sub-commands that need services build them through ``service.bootstrap``; ``simulate`` and
``schema`` need nothing at all. Nothing is read from the environment or opened at import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from service.domain import allocation, document, events, state


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; a line is read whole whatever its length."""
    for number, line in enumerate(stream, start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _open(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Apply a JSON-lines file of events with the pure core and print the result."""
    current = state.State()
    out = sys.stdout.buffer
    rejected = 0
    with _open(args.events) as stream:
        for number, line in _lines(stream):
            decision, event = allocation.apply_record(current, line)
            if event is None:
                rejected += 1
                print(f"line {number}: {decision.error}", file=sys.stderr)
            if args.decisions:
                out.write(events.encode_decision(decision) + b"\n")
    if not args.decisions:
        out.write(document.encode_document(document.state_document(current)) + b"\n")
    out.flush()
    if rejected:
        print(f"{rejected} malformed line(s) rejected", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of one log record."""
    print(json.dumps(events.json_schema(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipledger",
        description="Event-sourced IPAM for Kubernetes (Cilium cluster-pool allocation).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate", help="apply a JSON-lines event file in memory and print the final state"
    )
    simulate.add_argument("events", help="JSON-lines file of events, or - for standard input")
    simulate.add_argument(
        "--decisions", action="store_true", help="print one decision per line instead"
    )
    simulate.set_defaults(func=cmd_simulate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the event contract")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except FileNotFoundError as exc:
        print(f"ipledger: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

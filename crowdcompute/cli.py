"""The ``crowdcompute`` command: foreman, worker, local, status, invite, revoke, workers, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .volunteers import add_commands as add_volunteer_commands
from .wire.addresses import DEFAULT_PORT

__all__ = ["main"]

_DELEGATED = {
    "foreman": "accept jobs and hand their tasks to workers (see `crowdcompute foreman --help`)",
    "worker": "connect to a foreman and run its tasks (see `crowdcompute worker --help`)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crowdcompute",
        description="Map Python functions over many worker processes, on this machine or many.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in _DELEGATED.items():
        commands.add_parser(name, help=text, add_help=False)
    local = commands.add_parser("local", help="one foreman and N workers in one command; Ctrl-C stops them all")
    local.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)")
    local.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="foreman port; 0 picks a free one (default: 9000)"
    )
    status = commands.add_parser("status", help="workers, slots, jobs and progress as a table")
    status.add_argument("url", nargs="?", help="the foreman (default: $CROWDCOMPUTE_ADDRESS or ws://127.0.0.1:9000)")
    status.add_argument("--token", help="client token (default: the connection file, else $CROWDCOMPUTE_TOKEN)")
    status.add_argument("--cafile", help="CA certificate to verify a wss:// foreman")
    add_volunteer_commands(commands)
    demo = commands.add_parser("demo", help="run a demo job on an embedded foreman and workers")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    demo.add_argument("--items", type=int, default=200, help="how many items to map (default: 200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``crowdcompute`` command; Ctrl-C of a short command ends it with 130, without a traceback."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "foreman":
        from foreman.cli import main as foreman_main

        return foreman_main(argv[1:])
    if argv and argv[0] == "worker":
        from worker.cli import main as worker_main

        return worker_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "local":
        from .commands import run_local

        if not 0 <= args.port <= 65535:
            parser.error(f"--port must be 0-65535, not {args.port}")

        return run_local(args.workers, args.port)
    if args.command == "status":
        from .commands import show_status

        return asyncio.run(show_status(args.url, args.token, args.cafile))
    if args.command in ("invite", "revoke", "workers"):
        from . import volunteers

        command = {"invite": volunteers.invite, "revoke": volunteers.revoke, "workers": volunteers.show_workers}
        return asyncio.run(command[args.command](args))
    if args.command == "demo":
        from .demo import run_demo

        if args.workers is not None and args.workers < 1:
            parser.error(f"--workers must be at least 1, not {args.workers}")

        return asyncio.run(run_demo(args.workers, args.items))
    build_parser().print_help()
    return 2

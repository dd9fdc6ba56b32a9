"""``crowdcompute worker`` / ``python -m worker``: serve a foreman until stopped."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from crowdcompute.errors import AuthenticationError
from crowdcompute.processes import configure_logging, install_stop_handlers, stop_with_parent
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.constants import ADDRESS_VARIABLE, DEFAULT_URL, TOKEN_VARIABLE, WORKER_TOKEN_VARIABLE

from .agent import WorkerAgent

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crowdcompute worker",
        description="Connect to a foreman and run its tasks in isolated processes.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get(ADDRESS_VARIABLE, DEFAULT_URL),
        help="the foreman, ws://HOST:PORT or wss://HOST:PORT (default: $CROWDCOMPUTE_ADDRESS or ws://127.0.0.1:9000)",
    )
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="task processes (default: CPU count)")
    parser.add_argument(
        "--token",
        default=os.environ.get(WORKER_TOKEN_VARIABLE) or os.environ.get(TOKEN_VARIABLE),
        help="worker token (default: $CROWDCOMPUTE_WORKER_TOKEN, $CROWDCOMPUTE_TOKEN, or the "
        "foreman's connection file for a loopback address)",
    )
    parser.add_argument("--name", help="name shown in status (default: HOST-PID)")
    parser.add_argument("--cafile", help="CA certificate to verify a wss:// foreman")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default: info)")
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.procs < 1:
        print("error: --procs must be at least 1", file=sys.stderr)
        return 2
    try:
        address = parse_address(args.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    agent = WorkerAgent(address, token=args.token, procs=args.procs, name=args.name, cafile=args.cafile)
    try:
        asyncio.run(_serve(agent, args.exit_with_parent))
    except AuthenticationError as exc:  # a wrong token, or a volunteer's revoked or expired credential
        print(f"error: AuthenticationError: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(agent: WorkerAgent, exit_with_parent: bool) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    if exit_with_parent:
        stop_with_parent(stop)
    await agent.run(stop)

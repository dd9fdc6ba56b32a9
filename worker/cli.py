"""``crowdcompute worker`` / ``python -m worker``: serve a foreman until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING

from crowdcompute.errors import AuthenticationError
from crowdcompute.processes import (
    add_log_level,
    configure_logging,
    install_stop_handlers,
    keep_read_buffers_off_mmap,
    stop_with_parent,
)
from crowdcompute.sizes import parse_amount
from crowdcompute.wire.addresses import parse_address
from crowdcompute.wire.constants import (
    ADDRESS_VARIABLE,
    DEFAULT_URL,
    FOREMAN_TOKEN_VARIABLE,
    TOKEN_VARIABLE,
    WORKER_TOKEN_VARIABLE,
)

from .cgroups import pids_cgroups_available
from .environments import DEFAULT_CACHE_SIZE, Environments, InstallSource
from .launch import CommandLauncher
from .limits import MIN_MEMORY, Limits, UnenforceableLimitError, check_processes_limit, format_size, parse_size
from .pool import SlotSettings
from .sandbox import SandboxUnavailableError, find_bwrap
from .scratch import SCRATCH_PREFIX, remove_stale_scratch

if TYPE_CHECKING:
    from .agent import WorkerAgent

__all__ = ["build_parser", "main"]

log = logging.getLogger("crowdcompute.worker")


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
    parser.add_argument(
        "--resources",
        default="",
        help="what this worker has, for jobs that need it: NAME=AMOUNT,... (gpu=1,memory=64GB); "
        "a task holds its job's amounts while it runs",
    )
    parser.add_argument("--labels", default="", help="labels jobs may ask for: NAME=VALUE,... (site=lab1,os=linux)")
    parser.add_argument("--no-install", action="store_true", help="refuse jobs with requirements (install nothing)")
    parser.add_argument(
        "--env-cache-size",
        default=str(DEFAULT_CACHE_SIZE),
        help="disk space for cached job environments before the least recently used go "
        "(bytes, or a number with KB/MB/GB; default 10GB)",
    )
    parser.add_argument(
        "--find-links",
        action="append",
        default=[],
        metavar="DIR",
        help="install job requirements from this folder of wheels (repeatable; default: pip's configuration)",
    )
    parser.add_argument("--index-url", help="install job requirements from this package index")
    parser.add_argument("--no-index", action="store_true", help="use no package index (only --find-links)")
    sandbox = parser.add_argument_group("sandbox and limits (per task)")
    sandbox.add_argument(
        "--sandbox",
        action="store_true",
        help="run task processes under bubblewrap: read-only system, homes hidden, a private scratch "
        "folder per task, no network, own PID namespace (refuses to start where it cannot)",
    )
    sandbox.add_argument("--allow-network", action="store_true", help="with --sandbox: let tasks use the network")
    sandbox.add_argument(
        "--max-memory", type=_size, metavar="SIZE", help="address space per task process, e.g. 2GiB (default: no limit)"
    )
    sandbox.add_argument(
        "--max-cpu-seconds", type=_seconds, metavar="S", help="CPU seconds per task (default: no limit)"
    )
    sandbox.add_argument(
        "--max-disk", type=_size, metavar="SIZE", help="size of a task's scratch folder, e.g. 1GB (default: no limit)"
    )
    sandbox.add_argument(
        "--max-processes", type=_count, metavar="N", help="processes a task may run at once (default: no limit)"
    )
    add_log_level(parser)
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    return parser


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def slot_settings(args: argparse.Namespace) -> SlotSettings:
    """The launcher and limits the options ask for; SandboxUnavailableError or UnenforceableLimitError why not."""
    if args.allow_network and not args.sandbox:
        raise UnenforceableLimitError(
            "--allow-network only makes sense with --sandbox (without it tasks have the network)"
        )
    limits = Limits(args.max_memory, args.max_cpu_seconds, args.max_disk, args.max_processes)
    if limits.memory is not None and limits.memory < MIN_MEMORY:
        raise UnenforceableLimitError(
            f"--max-memory {format_size(limits.memory)} is too small: a task process needs at least "
            f"{format_size(MIN_MEMORY)} of address space to start"
        )
    settings = SlotSettings(limits=limits)
    if args.sandbox:
        settings.launcher = CommandLauncher(bwrap=find_bwrap(), network=args.allow_network)
        settings.sandboxed = True
    settings.processes_by = check_processes_limit(limits, args.sandbox)
    if args.sandbox and not settings.processes_by and pids_cgroups_available():
        settings.processes_by = "cgroup"  # no limit, but a cheap count of what a task leaves running
    if args.sandbox or limits.disk is not None:
        remove_stale_scratch()
        settings.scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    return settings


def describe(settings: SlotSettings) -> str:
    """One line saying how task processes are confined, for the log."""
    parts = []
    if settings.sandboxed:
        network = getattr(settings.launcher, "network", False)
        parts.append(f"sandboxed by bubblewrap ({'with' if network else 'no'} network)")
    limits = settings.limits
    parts += [limits.option(name) for name, value in limits.to_dict().items() if value is not None]
    return ", ".join(parts)


#: Variables that may hold a credential: read by the parser, then gone from this process's environment,
#: which every task process and installer it starts inherits (a job must not act as this worker).
CREDENTIAL_VARIABLES = (WORKER_TOKEN_VARIABLE, TOKEN_VARIABLE, FOREMAN_TOKEN_VARIABLE)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    if args.procs < 1:
        print("error: --procs must be at least 1", file=sys.stderr)
        return 2
    try:
        address = parse_address(args.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.token is None and not address.loopback:  # retrying would never find one
        print(
            f"error: no token for {address.url}: pass the foreman's worker token with --token (or "
            f"${WORKER_TOKEN_VARIABLE}); only a foreman on this machine's loopback address can be joined "
            "without one (its connection file holds it)",
            file=sys.stderr,
        )
        return 2
    if args.cafile is not None:
        from crowdcompute.dialing import client_ssl_context  # here: websockets loads later, with the agent

        try:  # a cafile that cannot be read would fail every attempt: said once, at once
            client_ssl_context(args.cafile)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        resources = {name: parse_amount(value) for name, value in parse_pairs(args.resources, "--resources").items()}
        labels = parse_pairs(args.labels, "--labels")
        cache_size = int(parse_size(args.env_cache_size))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    environments = None
    if not args.no_install:
        source = InstallSource.from_pip(args.find_links, args.index_url, args.no_index)
        environments = Environments(source, cache_size=cache_size)
    configure_logging(args.log_level)
    keep_read_buffers_off_mmap()
    try:
        settings = slot_settings(args)
    except (SandboxUnavailableError, UnenforceableLimitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.sandboxed or settings.limits.any:
        log.info("task processes: %s", describe(settings))
    settings.launcher.warm()  # task processes' forkserver boots while the agent's modules load
    from .agent import WorkerAgent

    agent = WorkerAgent(
        address,
        token=args.token,
        procs=args.procs,
        name=args.name,
        cafile=args.cafile,
        slot_settings=settings,
        resources=resources,
        labels=labels,
        environments=environments,
    )
    try:
        asyncio.run(_serve(agent, args.exit_with_parent))
    except AuthenticationError as exc:  # a wrong token, or a volunteer's revoked or expired credential
        print(f"error: AuthenticationError: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_pairs(text: str, option: str) -> dict[str, str]:
    """``a=1,b=x`` as a dict; ValueError naming the option and the bad part."""
    pairs: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = part.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ValueError(f"{option}: {part!r} is not NAME=VALUE (for example {option} gpu=1,site=lab1)")
        pairs[name.strip()] = value.strip()
    return pairs


async def _serve(agent: WorkerAgent, exit_with_parent: bool) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()
    install_stop_handlers(stop, again=hurry)  # a second Ctrl-C stops running tasks without waiting
    if exit_with_parent:
        stop_with_parent(stop)
    # A worker of an embedded cluster stops with its owner, as its foreman does: nobody is left to
    # take what running tasks would return, so they are not waited for.
    await agent.run(stop, drain=not exit_with_parent, hurry=hurry)

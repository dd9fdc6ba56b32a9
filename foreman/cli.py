"""``crowdcompute foreman`` / ``python -m foreman``: run a foreman until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from crowdcompute.processes import (
    add_log_level,
    collect_garbage_less_often,
    configure_logging,
    install_stop_handlers,
    keep_read_buffers_off_mmap,
    stop_with_parent,
)
from crowdcompute.wire.addresses import (
    DEFAULT_PORT,
    crowdcompute_home,
    generate_token,
    is_loopback,
    read_connection_file,
    remove_connection_file,
    write_connection_file,
)
from crowdcompute.wire.constants import FOREMAN_READY, FOREMAN_TOKEN_VARIABLE

from .limits import MAX_SLOTS_PER_WORKER
from .scheduler import RESULT_TTL
from .server import IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_FRAME_SIZE, ForemanServer
from .startup import StartupError, open_journal, tls_context

__all__ = ["build_parser", "main"]

log = logging.getLogger("crowdcompute.foreman")

#: File descriptors the foreman keeps beyond one per connection (its listening socket, journal, logs).
SPARE_FILES = 256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crowdcompute foreman",
        description="Accept jobs from clients and hand their tasks to workers.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to bind; 0 picks a free one (default: 9000)"
    )
    parser.add_argument("--token", help="client token (default: reuse or generate one and write a connection file)")
    parser.add_argument("--worker-token", help="worker token (default: the client token)")
    parser.add_argument(
        "--journal",
        default=None,
        help="SQLite journal that lets a restarted foreman resume its jobs, or 'none' "
        "(default: $CROWDCOMPUTE_HOME/journal-PORT.sqlite3)",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=RESULT_TTL,
        help=f"seconds a finished job's results stay available to attach (default: {RESULT_TTL:g})",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=10.0,
        help="seconds a silent worker keeps its tasks (default: 10)",
    )
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=MAX_FRAME_SIZE,
        help=f"largest frame (one task's input or outcome) accepted, in bytes (default: {MAX_FRAME_SIZE})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help=f"seconds a client with no running job may stay silent before it is closed (default: {IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-slots-per-worker",
        type=int,
        default=MAX_SLOTS_PER_WORKER,
        help=f"most task slots a worker is granted, whatever it claims (default: {MAX_SLOTS_PER_WORKER}; "
        "an invite's --slots may grant fewer)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"open connections (workers and clients) served at once; more are refused with 1013 "
        f"(default: {MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--no-backup-tasks",
        action="store_true",
        help="do not run backup copies of the slowest tasks at the tail of a job",
    )
    parser.add_argument(
        "--no-shared-files",
        action="store_true",
        help="never exchange big payloads as files with clients and workers on this host "
        "(every payload then crosses the websocket)",
    )
    parser.add_argument("--certfile", help="TLS certificate (serves wss://)")
    parser.add_argument("--keyfile", help="TLS private key")
    add_log_level(parser)
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    # A listening socket inherited from the parent (the embedded cluster binds it so
    # that its workers can start at the same time as the foreman).
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, not {args.port}")
    if bool(args.certfile) != bool(args.keyfile):
        print("error: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    if args.max_frame_size < 1024 * 1024:
        print("error: --max-frame-size must be at least 1 MiB", file=sys.stderr)
        return 2
    if args.idle_timeout <= 0:
        print("error: --idle-timeout must be positive", file=sys.stderr)
        return 2
    if args.max_slots_per_worker < 1:
        print("error: --max-slots-per-worker must be at least 1", file=sys.stderr)
        return 2
    if args.heartbeat_timeout <= 0:
        print("error: --heartbeat-timeout must be positive", file=sys.stderr)
        return 2
    if args.max_connections < 1:
        print("error: --max-connections must be at least 1", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    keep_read_buffers_off_mmap()
    collect_garbage_less_often()
    allow_open_files(args.max_connections + SPARE_FILES)
    try:
        return asyncio.run(_serve(args))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the connection file, say: its message names the file
        print(f"error: {exc}", file=sys.stderr)
        return 1


def allow_open_files(wanted: int) -> None:
    """Raise this process's limit of open files towards ``wanted`` (one per connection), as far as
    the hard limit allows; say so when that is less, since connections past it would fail to open."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "this process may open %d files, fewer than the %d that --max-connections needs: "
            "raise the hard limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) or lower --max-connections",
            target,
            wanted,
        )


def _journal(option: str | None):
    """None for 'none'; a Journal at the path given; else one named after the bound port.

    Raises StartupError (at once, or once the port is bound) naming the file when it cannot be opened.
    """
    if option is not None and option.lower() == "none":
        return None
    if option is not None:
        return open_journal(option)
    return lambda port: open_journal(crowdcompute_home() / f"journal-{port}.sqlite3")


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    if args.exit_with_parent:
        stop_with_parent(stop)
    # A parent (the embedded cluster) hands its token over in the environment, not
    # on the command line, where other users could read it with ps.
    token = args.token or os.environ.get(FOREMAN_TOKEN_VARIABLE)
    # An embedded foreman (token from its parent) writes its connection file too, so that
    # this user's Jupyter server can find it and show its status page; it removes it on exit.
    embedded = not args.token and token is not None
    write_file = token is None or embedded
    if token is None:
        previous = read_connection_file(args.port) if args.port else None
        token = previous["token"] if previous else generate_token()
    ssl_context = tls_context(args.certfile, args.keyfile) if args.certfile else None
    journal = _journal(args.journal)  # before binding: a wrong --journal is not a wrong port
    server = ForemanServer(
        args.host,
        args.port,
        token=token,
        worker_token=args.worker_token,
        heartbeat_timeout=args.heartbeat_timeout,
        ssl_context=ssl_context,
        journal=journal,
        result_ttl=args.result_ttl,
        max_frame_size=args.max_frame_size,
        idle_timeout=args.idle_timeout,
        max_slots_per_worker=args.max_slots_per_worker,
        max_connections=args.max_connections,
        backup_tasks=not args.no_backup_tasks,
        share_files=not args.no_shared_files,
        sock=socket.socket(fileno=args.fd) if args.fd is not None else None,
    )
    try:
        address = await server.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    path = None
    if write_file:
        path = write_connection_file(address.port, address.url, token, embedded=embedded)
        log.info("connection file: %s", path)
    if not is_loopback(args.host) and ssl_context is None:
        print(
            f"warning: the foreman listens on {args.host}:{address.port} without TLS: tokens, code "
            "and data cross the network in clear text, and anyone who learns the token can run "
            "code on every worker. Use --certfile/--keyfile, or bind 127.0.0.1.",
            file=sys.stderr,
            flush=True,
        )
    print(f"{FOREMAN_READY}{address.url}", flush=True)
    await stop.wait()
    log.info("stopping")
    await server.stop()
    if embedded and path is not None:
        remove_connection_file(address.port)
    return 0

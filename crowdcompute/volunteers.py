"""``crowdcompute invite``, ``revoke`` and ``workers``: admin actions on a running foreman.

They travel as admin messages on a client connection (the client token is
the admin's): InviteVolunteer, RevokeVolunteer and ListVolunteers, each
answered with a VolunteersReply.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from rich.table import Table

from .client import CrowdComputeClient
from .errors import CrowdComputeError
from .tables import Column, console, counted, table_of
from .wire.addresses import parse_address
from .wire.client_messages import volunteer_name_problem
from .wire.constants import ADDRESS_VARIABLE, DEFAULT_URL

__all__ = ["add_commands", "invite", "parse_duration", "revoke", "show_workers", "workers_table"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_URL_HELP = "the foreman (default: $CROWDCOMPUTE_ADDRESS or ws://127.0.0.1:9000)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``invite``, ``revoke`` and ``workers`` to the ``crowdcompute`` command."""
    invite_parser = commands.add_parser(
        "invite", help="create a credential for a volunteer worker and print its join command"
    )
    invite_parser.add_argument("name", help="the volunteer's name (its identity for reputation and revocation)")
    invite_parser.add_argument("url", nargs="?", help=_URL_HELP + "; the join command uses it")
    invite_parser.add_argument(
        "--slots", type=int, default=None, help="most task slots it is granted (default: the foreman's maximum)"
    )
    invite_parser.add_argument(
        "--expires", help="how long the credential is valid: 90 (seconds), 90s, 30m, 12h, 7d, 2w"
    )
    invite_parser.add_argument(
        "--trusted", action="store_true", help="clients may unpickle its results (default: plain data only)"
    )
    revoke_parser = commands.add_parser("revoke", help="refuse a volunteer from now on and close its connections")
    revoke_parser.add_argument("name", help="the volunteer's name")
    revoke_parser.add_argument("url", nargs="?", help=_URL_HELP)
    workers_parser = commands.add_parser("workers", help="volunteers and their record")
    workers_parser.add_argument("url", nargs="?", help=_URL_HELP)
    for parser in (invite_parser, revoke_parser, workers_parser):
        parser.add_argument("--token", help="client token (default: the connection file, else $CROWDCOMPUTE_TOKEN)")
        parser.add_argument("--cafile", help="CA certificate to verify a wss:// foreman")


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``; ValueError otherwise."""
    found = _DURATION.match(text or "")
    if not found or float(found.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a duration: write a positive number of seconds, or one with s, m, h, d or w (e.g. 7d)"
        )
    return float(found.group(1)) * _UNITS[found.group(2)]


def _url(url: str | None) -> str:
    return url or os.environ.get(ADDRESS_VARIABLE) or DEFAULT_URL


def _client(args: argparse.Namespace) -> CrowdComputeClient:
    return CrowdComputeClient(
        _url(args.url),
        token=args.token,  # None: chosen as connect() chooses (crowdcompute.tokens)
        cafile=args.cafile,
        reconnect_timeout=0,
    )


async def invite(args: argparse.Namespace) -> int:
    """Print what was created, then (last line) the join command ``crowdcompute worker URL --token CREDENTIAL``."""
    expires_in = None
    if args.expires is not None:
        try:
            expires_in = parse_duration(args.expires)
        except ValueError as exc:
            print(f"error: --expires: {exc}", file=sys.stderr)
            return 2
    problem = volunteer_name_problem(args.name)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.slots is not None and args.slots < 1:
        print(
            f"error: --slots must be at least 1, not {args.slots} (leave it out for the foreman's maximum)",
            file=sys.stderr,
        )
        return 2
    try:
        url = parse_address(_url(args.url)).url  # the join command names the foreman in full
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        async with _client(args) as client:
            credential, volunteer = await client.invite(
                args.name, slots=args.slots or 0, expires_in=expires_in, trusted=args.trusted
            )
    except CrowdComputeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    terms = ["trusted" if volunteer["trusted"] else "untrusted: clients decode its results as plain data"]
    terms.append(
        f"up to {counted(volunteer['slots'], 'slot')}" if volunteer["slots"] else "slots: the foreman's maximum"
    )
    if volunteer["expires_at"]:
        terms.append("expires " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(volunteer["expires_at"])))
    print(f"invited volunteer {volunteer['identity']} ({'; '.join(terms)})")
    if getattr(args, "cafile", None):  # the foreman's certificate is signed by a CA volunteers may not trust
        print(
            f"its certificate was checked here against {args.cafile}: send them that CA file too; "
            "they add --cafile PATH-TO-IT to the command below"
        )
    print("send them this command privately (it holds their credential; `crowdcompute revoke` cancels it):")
    print(f"crowdcompute worker {url} --token {credential}", flush=True)
    return 0


async def revoke(args: argparse.Namespace) -> int:
    try:
        async with _client(args) as client:
            answer = await client.revoke(args.name)
    except CrowdComputeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    closed = counted(answer["closed"], "connection")
    print(f"revoked volunteer {answer['volunteer']['identity']}: closed {closed}", flush=True)
    return 0


async def show_workers(args: argparse.Namespace) -> int:
    try:
        async with _client(args) as client:
            volunteers = await client.volunteers()
    except CrowdComputeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    console().print(workers_table(volunteers, _url(args.url)))
    return 0


def workers_table(volunteers: list[dict], url: str) -> Table:
    """Volunteers and their record as a rich table; the volunteer's name whole, as ``revoke`` wants it."""
    rows = []
    for v in volunteers:
        joined = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["joined_at"])) if v.get("joined_at") else "never"
        state = "quarantined, " + v["state"] if v.get("quarantined") else v["state"]
        record = [v["tasks_done"], v["agreed"], v["disagreed"], v["missed_deadlines"]]
        connected = ", ".join(v.get("connected", [])) or "-"
        rows.append([v["identity"], "yes" if v["trusted"] else "no", joined, connected, *record, state])
    columns = [Column("volunteer", whole=True), Column("trusted"), Column("joined"), Column("connected")]
    columns += [Column(c, numeric=True, whole=True) for c in ("tasks done", "agreed", "disagreed", "missed deadlines")]
    title = f"foreman {url}: {counted(len(volunteers), 'volunteer')}"
    return table_of(title, [*columns, Column("state")], rows)

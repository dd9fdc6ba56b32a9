"""Job environments: one virtual environment per (Python, requirements), built with uv and cached.

A job that names ``requirements`` runs its tasks with the packages of an
environment built for exactly that set. Environments live under
``$CROWDCOMPUTE_HOME/envs/KEY`` (KEY: a digest of the Python version and the
normalized, sorted requirements), survive restarts, and are shared by every
job (and every worker of this user on this machine) that needs the same set.
A file lock per key makes two jobs (or two workers) build it once. Past
``cache_size`` bytes the least recently used environments are deleted,
never one that a current job uses.

How a task process uses one: it is the worker's own interpreter with the
environment's ``site-packages`` put first on ``sys.path`` (see
:mod:`worker.child`). That keeps the worker's Python (same ABI as the
environment, which uv builds for ``sys.executable``), the worker's
cloudpickle (already imported, so the job's pickles decode as the client
made them) and our own packages, and lets a task process start from the
worker's forkserver in milliseconds; packages of the environment shadow the
worker's own copies.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from crowdcompute.wire.addresses import crowdcompute_home

__all__ = ["DEFAULT_CACHE_SIZE", "BuildFailed", "Environments", "InstallSource", "normalize"]

#: Bytes of environments kept on disk before the least recently used go (``--env-cache-size``).
DEFAULT_CACHE_SIZE = 10 * 10**9
#: Seconds one environment build may take before it counts as failed.
BUILD_TIMEOUT = 900.0
#: Lines of the installer's output quoted in an EnvironmentBuildError.
QUOTED_LINES = 12
_READY = "ready.json"


class BuildFailed(Exception):
    """An environment could not be built; ``str()`` names the requirement and quotes the installer."""


@dataclass(frozen=True)
class InstallSource:
    """Where packages come from: the worker's options, else pip's configuration on this machine."""

    find_links: list[str] = field(default_factory=list)
    index_url: str | None = None
    no_index: bool = False
    extra_index_urls: list[str] = field(default_factory=list)  # from pip's configuration only

    def uv_options(self) -> list[str]:
        options = [f"--find-links={link}" for link in self.find_links]
        if self.index_url:
            options.append(f"--index-url={self.index_url}")
        options += [f"--extra-index-url={url}" for url in self.extra_index_urls]
        if self.no_index:
            options.append("--no-index")
        return options

    @classmethod
    def from_pip(cls, find_links: list[str], index_url: str | None, no_index: bool) -> InstallSource:
        """The given options, completed from pip's environment variables and config files (uv reads neither)."""
        config = _pip_config()
        links = list(find_links) or config.get("find-links", "").split()
        index = index_url or config.get("index-url") or None
        offline = no_index or config.get("no-index", "").lower() in ("1", "true", "yes", "on")
        extra = [] if index_url or offline else config.get("extra-index-url", "").split()
        return cls(links, index, offline, extra)


def _pip_config() -> dict[str, str]:
    """pip's global/install settings from its config files, then ``PIP_*`` variables (later wins)."""
    parser = configparser.ConfigParser()
    home = Path.home()
    files = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        home / ".pip" / "pip.conf",
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf",
        Path(sys.prefix) / "pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    with contextlib.suppress(configparser.Error):
        parser.read([str(f) for f in files])
    found: dict[str, str] = {}
    for section in ("global", "install"):
        if parser.has_section(section):
            found.update(parser.items(section))
    for name in ("index-url", "extra-index-url", "find-links", "no-index"):
        value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if value is not None:
            found[name] = value
    return found


def normalize(requirements: list[str]) -> list[str]:
    """The requirements as a sorted list without duplicates, names canonical; BuildFailed names a bad one."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # pragma: no cover - packaging is a dependency
        return sorted({" ".join(r.split()) for r in requirements})
    result = set()
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise BuildFailed(f"requirement {text!r} is not valid: {exc}") from None
        requirement.name = canonicalize_name(requirement.name)
        result.add(str(requirement))
    return sorted(result)


def uv_binary() -> str:
    """The uv executable that the ``uv`` wheel installed."""
    from uv import find_uv_bin

    return find_uv_bin()


class Environments:
    """The environment cache of this worker: build, reuse, evict."""

    def __init__(
        self,
        source: InstallSource,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        root: Path | None = None,
    ) -> None:
        self.source = source
        self.cache_size = cache_size
        self.root = root or crowdcompute_home() / "envs"
        self._locks: dict[str, asyncio.Lock] = {}
        self.in_use: set[str] = set()  # keys of environments current jobs use (never evicted)

    def key(self, requirements: list[str]) -> str:
        """The cache key: Python version and normalized requirements."""
        python = f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
        text = json.dumps([python, normalize(requirements)])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def cached(self, key: str) -> Path | None:
        """The site-packages folder of a built environment, or None."""
        ready = self.root / key / _READY
        if not ready.exists():
            return None
        with contextlib.suppress(OSError):
            os.utime(ready)  # its last use, for the LRU order
        return Path(json.loads(ready.read_text())["site"])

    async def ensure(self, requirements: list[str]) -> tuple[Path, float]:
        """The site-packages folder of the environment for ``requirements``, and the seconds spent building it.

        Builds it once (0.0 when cached). Raises BuildFailed.
        """
        key = self.key(requirements)
        found = self.cached(key)
        if found is not None:
            return found, 0.0
        started = time.monotonic()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.cached(key)
            if found is None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._build_locked, key, normalize(requirements))
                found = self.cached(key)
                await loop.run_in_executor(None, self.evict, {key})
        if found is None:  # pragma: no cover - a build that returned wrote ready.json
            raise BuildFailed("the environment vanished right after it was built")
        return found, time.monotonic() - started

    def _build_locked(self, key: str, requirements: list[str]) -> None:
        """Build under a file lock shared with other workers on this machine (blocking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not (self.root / key / _READY).exists():
                    self._build(self.root / key, requirements)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build(self, folder: Path, requirements: list[str]) -> None:
        import subprocess

        shutil.rmtree(folder, ignore_errors=True)
        venv = folder / "venv"
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
        env.pop("PYTHONPATH", None)
        uv = uv_binary()
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *self.source.uv_options()]
            + ["--", *requirements],
        ]
        for command in steps:
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                shutil.rmtree(folder, ignore_errors=True)
                raise BuildFailed(
                    f"installing {', '.join(requirements)} took longer than {BUILD_TIMEOUT:g} s"
                ) from None
            if done.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise BuildFailed(_explain(requirements, done.stderr or done.stdout))
        sites = sorted(venv.glob("lib/python*/site-packages")) or sorted(venv.glob("Lib/site-packages"))
        if not sites:
            raise BuildFailed(f"uv built {venv} but it has no site-packages folder")
        ready = {"site": str(sites[0]), "requirements": requirements, "python": sys.version.split()[0]}
        (folder / _READY).write_text(json.dumps(ready))

    def evict(self, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Delete least recently used environments until the cache fits ``cache_size`` (blocking).

        Never those of current jobs (``in_use``) or ``keep`` (the one just built).
        """
        if not self.root.exists():
            return
        entries = []
        for ready in self.root.glob(f"*/{_READY}"):
            folder = ready.parent
            entries.append((ready.stat().st_mtime, folder.name, _size(folder)))
        total = sum(size for _, _, size in entries)
        for _, key, size in sorted(entries):
            if total <= self.cache_size:
                break
            if key in self.in_use or key in keep:
                continue
            with open(self.root / f"{key}.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # another worker is building or checking it
                (self.root / key / _READY).unlink(missing_ok=True)
                shutil.rmtree(self.root / key, ignore_errors=True)
                total -= size


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _explain(requirements: list[str], output: str) -> str:
    """Name the requirement(s) the installer's error mentions and quote its last lines."""
    lines = [line.rstrip() for line in output.strip().splitlines() if line.strip()]
    text = output.lower()
    named = [r for r in requirements if re.split(r"[<>=!~;\[ @]", r, maxsplit=1)[0].lower() in text] or requirements
    quoted = "\n".join("    " + line for line in lines[-QUOTED_LINES:])
    return f"could not install {', '.join(named)}; the installer (uv) said:\n{quoted}"

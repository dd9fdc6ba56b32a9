"""The user's own modules, sent with a job by value (``map(..., modules=[helpers])``).

The client reads each module's source (a package: every ``.py`` file under
it) and wraps the job's function in :class:`WithModules`. Unpickling that
wrapper on a worker first writes the sources to a folder named after their
digest and puts it first on ``sys.path``, then unpickles the function, so
``import helpers`` inside it, and references to ``helpers.f``, find the
job's copy. Changed source is a new digest: a new folder, and the modules
of an older copy are dropped from ``sys.modules`` (no stale cache).

:func:`local_modules` finds the modules a function refers to that are
neither installed nor on ``PYTHONPATH``, so the client can suggest
``modules=[...]`` before a worker fails to import them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import sys
import sysconfig
import tempfile
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import LocalModuleWarning

__all__ = ["MAX_MODULE_BYTES", "ModuleBundle", "WithModules", "local_modules", "read_modules", "warn_local_modules"]

#: Most bytes of source the modules of one job may hold.
MAX_MODULE_BYTES = 10 * 1024 * 1024
#: Our own packages are on every worker.
_OURS = ("crowdcompute", "crowdcompute_jupyter", "foreman", "worker")


class ModuleBundle:
    """Module sources (relative path -> text) and the top-level names they define."""

    def __init__(self, files: dict[str, str], names: list[str]) -> None:
        self.files = files
        self.names = names
        self.digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]

    def __reduce__(self):
        return (_install, (self.files, self.names))

    @property
    def folder(self) -> Path:
        return Path(tempfile.gettempdir()) / f"crowdcompute-modules-{os.getuid()}" / self.digest

    def activate(self) -> None:
        """Make this copy of the modules the one ``import`` finds (in a task process)."""
        global _active
        if _active == self.digest:
            return
        folder = str(self.folder)
        sys.path[:] = [p for p in sys.path if not _is_bundle_folder(p)]
        sys.path.insert(0, folder)
        for loaded in list(sys.modules):
            if loaded.split(".")[0] in self.names:
                module_file = getattr(sys.modules[loaded], "__file__", None) or ""
                if not module_file.startswith(folder + os.sep):
                    del sys.modules[loaded]
        importlib.invalidate_caches()
        _active = self.digest


_active = ""  # digest of the bundle whose folder is first on sys.path


def _is_bundle_folder(path: str) -> bool:
    return Path(path).parent.name.startswith("crowdcompute-modules-")


def _install(files: dict[str, str], names: list[str]) -> ModuleBundle:
    """Unpickling a bundle: write its files (once per digest) and activate it."""
    bundle = ModuleBundle(files, names)
    folder = bundle.folder
    if not (folder / ".complete").exists():
        for relative, text in files.items():
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise ValueError(f"module path {relative!r} leaves its folder")
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, target)  # another task process may write the same file: each write is whole
        (folder / ".complete").touch()
    bundle.activate()
    return bundle


class WithModules:
    """The job's function with the modules it needs; calling it calls the function."""

    def __init__(self, bundle: ModuleBundle, func: Callable) -> None:
        self.bundle = bundle
        self.func = func

    def __reduce__(self):
        return (WithModules, (self.bundle, self.func))  # the bundle unpickles (installs) first

    def __call__(self, item: Any) -> Any:
        self.bundle.activate()
        return self.func(item)

    def activate(self) -> None:
        self.bundle.activate()

    @property
    def __name__(self) -> str:
        return getattr(self.func, "__name__", repr(self.func))


def read_modules(modules: Iterable[Any]) -> ModuleBundle:
    """A bundle of ``modules`` (module objects, or paths of ``.py`` files or package folders).

    Raises ValueError saying which entry is not a module with source.
    """
    files: dict[str, str] = {}
    names: list[str] = []
    for entry in modules:
        path = _source_path(entry)
        if path.is_dir():
            if not (path / "__init__.py").exists():
                raise ValueError(f"modules: {str(path)!r} is a folder without __init__.py, not a package")
            for source in sorted(path.rglob("*.py")):
                files[str(Path(path.name) / source.relative_to(path))] = source.read_text(encoding="utf-8")
            names.append(path.name)
        else:
            files[path.name] = path.read_text(encoding="utf-8")
            names.append(path.stem)
    total = sum(len(text) for text in files.values())
    if total > MAX_MODULE_BYTES:
        raise ValueError(f"modules: {total:,} bytes of source, over the limit of {MAX_MODULE_BYTES:,} per job")
    return ModuleBundle(files, names)


def _source_path(entry: Any) -> Path:
    if isinstance(entry, types.ModuleType):
        top = entry.__name__.split(".")[0]
        if top != entry.__name__ and top in sys.modules:  # pkg.helpers: the package travels whole
            entry = sys.modules[top]
        file = getattr(entry, "__file__", None)
        if not file or not file.endswith(".py"):
            raise ValueError(f"modules: {entry.__name__!r} has no Python source file to send")
        path = Path(file)
        return path.parent if path.name == "__init__.py" else path
    if isinstance(entry, (str, os.PathLike)):
        path = Path(entry).expanduser()
        if path.is_dir() or (path.is_file() and path.suffix == ".py"):
            return path
        raise ValueError(f"modules: {str(entry)!r} is neither a .py file nor a package folder")
    raise ValueError(f"modules: expected a module or a path, not {type(entry).__name__}")


def local_modules(func: Callable, sent: Iterable[str] = ()) -> list[str]:
    """Names of the user's own modules ``func`` refers to that workers may lack (not installed,
    not on ``PYTHONPATH``, not in ``sent``)."""
    target = getattr(func, "func", func)
    try:
        found = inspect.getclosurevars(target)
    except (TypeError, ValueError):
        return []
    names: set[str] = set()
    for value in {**found.globals, **found.nonlocals}.values():
        module_name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(module_name, str) and (inspect.ismodule(value) or inspect.isclass(value) or callable(value)):
            names.add(module_name)
    # The function's own module travels by value with it (dumps_function
    # registers it with cloudpickle), helpers and all: only other modules are missing.
    own = getattr(target, "__module__", None)
    sent = set(sent)
    return sorted(name for name in names if name != own and name.split(".")[0] not in sent and _is_local(name))


def _roots() -> tuple[Path, ...]:
    """Where installed modules live: the standard library, site-packages and ``PYTHONPATH``."""
    return _roots_with(os.environ.get("PYTHONPATH", ""))


@functools.lru_cache(maxsize=4)
def _roots_with(pythonpath: str) -> tuple[Path, ...]:
    """``_roots`` for a ``PYTHONPATH``: resolved once (half a millisecond a job otherwise)."""
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    roots = {Path(sysconfig.get_paths()[key]).resolve() for key in keys}
    roots |= {Path(p).resolve() for p in pythonpath.split(os.pathsep) if p}
    return tuple(sorted(roots))


def _is_local(name: str) -> bool:
    """Whether module ``name`` is one of the user's own files, which a worker may not have."""
    if name == "__main__" or name.split(".")[0] in _OURS:
        return False
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if module is None or not path:
        return False
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(root) for root in _roots())


def warn_local_modules(func: Callable, sent: Sequence[str]) -> None:
    """Warn when ``func`` uses one of the user's own modules that is not sent with the job."""
    missing = local_modules(func, sent)
    if missing:
        names = ", ".join(name.split(".")[0] for name in missing)
        warnings.warn(
            f"{getattr(func, '__name__', 'the function')} uses your module(s) {names}, which workers on other "
            f"machines may not have; pass modules=[{names}] to send them with the job",
            LocalModuleWarning,
            stacklevel=_callers_level(),
        )


#: Modules whose frames stand between the user's code and ours: a warning names neither.
_PASSED_THROUGH = (
    "crowdcompute",
    "crowdcompute_jupyter",
    "asyncio",
    "nest_asyncio2",
    "nest_asyncio",
    "IPython",
    "ipykernel",
)


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame of the user's code (a script's call of ``map``, a
    notebook cell), past ours, the event loop's and IPython's (a fixed level named client.py)."""
    frame: FrameType | None = sys._getframe(2)  # 1: warn_local_modules, which calls warnings.warn
    level = 2
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in _PASSED_THROUGH):
            return level
        frame, level = frame.f_back, level + 1
    return 2

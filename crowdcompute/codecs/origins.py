"""Where code comes from: an installed package (every worker can import it) or the user's own files.

Both codecs ask this: cloudpickle sends the user's own modules by value, and
portable jobs send the user's own functions as source; names from installed
packages travel by reference.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from types import ModuleType

__all__ = ["OUR_PACKAGES", "is_installed", "users_module"]

_INSTALLED = tuple(
    {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
)
#: Our own packages are on every worker: they always travel by reference.
OUR_PACKAGES = ("crowdcompute", "crowdcompute_jupyter", "foreman", "worker")


def users_module(name: object) -> ModuleType | None:
    """The module called ``name`` if it is the user's own file (not installed, not ours, not ``__main__``)."""
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__" or getattr(module, "__file__", None) is None:
        return None
    return None if is_installed(name) else module


def is_installed(name: object) -> bool:
    """True when the module called ``name`` is built in, frozen, ours, or under an installation
    path: a worker with the same packages can import it."""
    if not isinstance(name, str) or name == "__main__" or name not in sys.modules:
        return False
    module = sys.modules[name]
    if name.split(".")[0] in OUR_PACKAGES:
        return True
    path = getattr(module, "__file__", None)
    if path is None:
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        return name in sys.builtin_module_names or origin in ("built-in", "frozen")
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(root) for root in _INSTALLED)

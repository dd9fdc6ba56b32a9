"""Functions defined in a module of the user's own, for portable-job tests."""

import math

FACTOR = 3
NAMES = {"a": 1, "b": 2}


def scale(x):
    return math.floor(x * FACTOR) + NAMES["b"]


def python_version(_):
    import sys

    return ".".join(map(str, sys.version_info[:2]))


def fails_on_zero(x):
    return 10 // x


LOCK = __import__("threading").Lock()


def uses_a_lock(x):
    with LOCK:
        return x


SETTINGS = {"scale": 4.0}


def hypot(x):  # named like the attribute it reads: math.hypot is not this module's hypot
    return math.hypot(x, SETTINGS["scale"])


def _double(x):
    return 2 * x


def doubled_range(n):  # a helper of this module, read inside a comprehension
    return [_double(v) for v in range(n)]


class Scaled:
    def __init__(self, x):
        self.x = x

    def value(self):
        return _double(self.x) * FACTOR


def uses_a_class(x):
    return Scaled(x).value()

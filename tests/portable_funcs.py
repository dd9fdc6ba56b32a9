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

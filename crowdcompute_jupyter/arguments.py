"""Splitting a ``%%crowdmap`` line into its Python expression and its options.

``%%crowdmap range(100, 140) -o r`` holds an expression with spaces, so the
line cannot go through a shell-like splitter (which would also eat the
quotes of ``["a b", "c"]``). Words are split on whitespace that is outside
brackets and string literals; a word that is a known option (with its value)
is an option, every other word belongs to the expression.
"""

from __future__ import annotations

import re

__all__ = ["split_expression"]

_OPENING, _CLOSING = "([{", ")]}"
_TRIPLE_QUOTES = ('"""', "'''")


def _mask(line: str) -> str:
    """``line`` with the insides of brackets and string literals replaced by "x"."""
    masked: list[str] = []
    depth = 0
    quote = ""
    i = 0
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\":
                masked.append("x" * len(line[i : i + 2]))
                i += 2
                continue
            if line.startswith(quote, i):
                masked.append("x" * len(quote))
                i += len(quote)
                quote = ""
                continue
            masked.append("x")
        elif line.startswith(_TRIPLE_QUOTES, i):
            quote = line[i : i + 3]
            masked.append("xxx")
            i += 3
            continue
        elif char in "'\"":
            quote = char
            masked.append("x")
        elif char in _OPENING:
            depth += 1
            masked.append("x")
        elif char in _CLOSING:
            depth = max(0, depth - 1)
            masked.append("x")
        else:
            masked.append("x" if depth else char)
        i += 1
    return "".join(masked)


def split_expression(line: str, value_options: set[str]) -> tuple[str, list[str]]:
    """Split ``line`` into (expression, option words for argparse).

    ``value_options`` are the flags that take a value (``-o``, ``--timeout``).
    A word starting with ``--`` is always an option (``--x=1`` included), so
    argparse reports unknown ones. The expression's words are joined with
    single spaces, which never changes what a Python expression means outside
    strings and brackets (whose insides are kept as they are).
    """
    words = [line[m.start() : m.end()] for m in re.finditer(r"\S+", _mask(line))]
    expression: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in value_options:
            options.extend(words[i : i + 2])
            i += 2
            continue
        if word.startswith("--") and len(word) > 2 and word[2].isalpha():
            options.append(word)
        else:
            expression.append(word)
        i += 1
    return " ".join(expression), options

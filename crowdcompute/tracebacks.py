"""Remote tracebacks that read like local ones.

On the worker (:func:`format_user_traceback`): the traceback text without
our own frames (the execution loop, the cell runner), so that it starts at
the user's code. On the client (:func:`localize_traceback`): each remote
frame whose source the worker did not have but this process does (a
notebook cell, the user's own module) gets its source line, and frames of a
notebook cell are named as IPython names them, ``Cell In[3], line 4``.
Imports nothing but the standard library; IPython only when it is loaded.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import traceback
from pathlib import Path

__all__ = ["format_user_traceback", "localize_traceback"]

#: Folders of our own packages: their frames are no part of the user's traceback.
_OUR_FOLDERS = tuple(
    str(Path(__file__).resolve().parent.parent / name) + os.sep
    for name in ("crowdcompute", "crowdcompute_jupyter", "worker", "foreman")
)
_FRAME = re.compile(r'^  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$')


def _ours(filename: str) -> bool:
    return filename.startswith(_OUR_FOLDERS)


def _drop_our_frames(summary: traceback.TracebackException, seen: set[int]) -> None:
    if id(summary) in seen:
        return
    seen.add(id(summary))
    frames = [frame for frame in summary.stack if not _ours(frame.filename)]
    if frames:  # an error raised by our code itself keeps its frames: they are the story
        summary.stack = traceback.StackSummary.from_list(frames)
    for chained in (summary.__cause__, summary.__context__):
        if chained is not None:
            _drop_our_frames(chained, seen)


def format_user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as text, without the frames of our own packages."""
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _drop_our_frames(summary, set())
    return "".join(summary.format())


def _cell_label(filename: str) -> str | None:
    """``Cell In[3]`` for a notebook cell's file name, when IPython runs in this process."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    compiler = getattr(shell, "compile", None)
    if compiler is None or not hasattr(compiler, "format_code_name"):
        return None
    try:
        label = compiler.format_code_name(filename)
    except Exception:
        return None
    return f"{label[0]} {label[1]}" if label else None


def localize_traceback(text: str) -> str:
    """``text`` with local source lines under remote frames that lack them, and cells named as IPython does."""
    lines = text.splitlines()
    out: list[str] = []
    for number, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            out.append(line)
            continue
        filename, lineno = match["file"], int(match["line"])
        label = _cell_label(filename)
        out.append(f"  {label}, line {lineno}, in {match['name']}" if label else line)
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if following.startswith("    "):
            continue  # the worker had the source
        source = linecache.getline(filename, lineno).strip()
        if source:
            out.append(f"    {source}")
    return "\n".join(out)

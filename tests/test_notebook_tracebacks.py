"""Remote tracebacks in a real Jupyter kernel read like local ones: the user's source lines,
``Cell In[n], line k``, none of our own frames, the exception's type said once."""

from __future__ import annotations

import re

from test_jupyter_kernel import CELL_TIMEOUT, Kernel, connect, kernel, private_jupyter_dirs  # noqa: F401

ANSI = re.compile(r"\x1b\[[0-9;]*m")
OUR_FILES = ("execution.py", "cell.py", "pickled.py", "crowdcompute_jupyter", "worker/", "codecs")


def failing(kernel: Kernel, code: str) -> str:
    """Run ``code``, which must fail; its traceback as plain text."""
    cell = kernel.execute(code)
    kernel.wait(lambda: cell.idle, CELL_TIMEOUT, f"the cell {code[:40]!r} to finish")
    assert cell.error is not None, f"the cell did not fail: {cell.text}"
    return ANSI.sub("", "\n".join(cell.error["traceback"]))


def assert_reads_like_a_local_traceback(text: str, source_line: str, exc_type: str) -> None:
    assert source_line in text, f"the user's source line is missing:\n{text}"
    assert re.search(r"Cell In\[\d+\], line \d+", text), f"no 'Cell In[n], line k':\n{text}"
    assert "<dynamic-code>" not in text, text
    assert not [name for name in OUR_FILES if name in text], f"our own frames leaked:\n{text}"
    assert f"{exc_type}: {exc_type}" not in text and f"{exc_type} in {exc_type}" not in text, text


def test_remote_tracebacks_show_the_cells_source(cluster, kernel):
    connect(kernel, cluster)
    check = "def check(x):\n    y = x + 1\n    if x == 3:\n        raise ValueError(f'bad {x}')\n    return y\n"
    text = failing(kernel, "%%crowdmap range(5) -o checked\n" + check)
    assert_reads_like_a_local_traceback(text, "raise ValueError(f'bad {x}')", "ValueError")
    assert "line 4, in check" in text and text.splitlines()[0].startswith("ValueError in item 3 (3): bad 3"), text

    # A function defined in a plain cell and mapped with top-level await.
    kernel.run("def halve(x):\n    assert x % 2 == 0, f'{x} is odd'\n    return x // 2\n")
    text = failing(kernel, "import crowdcompute\nawait crowdcompute.map(halve, [2, 4, 5], progress=False)")
    assert_reads_like_a_local_traceback(text, "assert x % 2 == 0, f'{x} is odd'", "AssertionError")

    # A %%crowdcompute cell: its own line, as the notebook numbers it.
    text = failing(kernel, "%%crowdcompute\na = 1\nb = a - 1\na / b\n")
    assert_reads_like_a_local_traceback(text, "a / b", "ZeroDivisionError")
    assert "line 3, in <module>" in text, text

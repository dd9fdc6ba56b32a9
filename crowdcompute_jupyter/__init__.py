"""The Jupyter layer of CrowdCompute: magics and a live progress widget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crowdcompute.progress import register_renderer

if TYPE_CHECKING:
    from crowdcompute.job import Job

    from .widget import ProgressWidget

__all__ = ["load_ipython_extension"]


def _widget(job: Job) -> ProgressWidget:
    """The progress renderer of ``progress=None`` in a kernel (ipywidgets loads on first use)."""
    from .widget import ProgressWidget

    return ProgressWidget(job)


register_renderer("widget", _widget)


def load_ipython_extension(ipython) -> None:
    """``%load_ext crowdcompute_jupyter``: register the magics."""
    from .cell_errors import install_error_display
    from .magics import CrowdComputeMagics

    ipython.register_magics(CrowdComputeMagics(ipython))
    install_error_display(ipython)


def _jupyter_server_extension_points() -> list[dict]:
    """Jupyter Server extension: the status page under /crowdcompute/ and an optional shared cluster."""
    from .server_extension import CrowdCompute

    return [{"module": "crowdcompute_jupyter.server_extension", "app": CrowdCompute}]

"""The Jupyter server extension on a real Jupyter server: /crowdcompute/ behind Jupyter's login,
a shared cluster that kernels use with no address, and that stops with the server.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import psutil
import pytest
import tomllib
from jupyter_servers import JUPYTER_CONFIG, jupyter_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
#: Seconds the shared cluster's workers get to connect, and its processes to go away.
CLUSTER_TIMEOUT = 20.0


def wait_for(predicate, timeout: float, message: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{message} (waited {timeout} s)")
        time.sleep(interval)


def cluster_processes(server) -> list[psutil.Process]:
    """The server's children that are a foreman or a worker agent (other extensions start other things)."""
    found = []
    for child in psutil.Process(server.proc.popen.pid).children():
        try:
            if {"foreman", "worker"} & set(child.cmdline()[1:3]):
                found.append(child)
        except psutil.Error:
            continue
    return found


def page_status(server) -> dict:
    status, _, body = server.get("/crowdcompute/api/status")
    assert status == 200, body
    return json.loads(body)


def test_shared_cluster_behind_jupyter_login_used_by_kernels(jupyter_server):
    server = jupyter_server("--CrowdCompute.local_workers=2")
    children = cluster_processes(server)
    assert len(children) == 3  # the foreman and two worker agents, started with the server

    # Jupyter's own login guards the page and its API; the foreman's token never reaches the browser.
    status, headers, _ = server.get("/crowdcompute/", authenticated=False)
    assert status == 302 and headers["Location"].startswith("/login?next=%2Fcrowdcompute%2F")
    status, headers, _ = server.get("/crowdcompute/api/status", authenticated=False)
    assert status in (302, 403)
    status, headers, _ = server.get("/crowdcompute")
    assert status == 301 and headers["Location"] == "crowdcompute/"
    status, headers, body = server.get("/crowdcompute/")
    assert status == 200 and b'src="static/status.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, _ = server.get("/crowdcompute/static/status.js")
    assert status == 200
    assert server.get("/crowdcompute/static/../../api/kernels")[0] == 404

    workers = wait_for(
        lambda: len(page_status(server)["workers"]) == 2 and page_status(server)["workers"],
        CLUSTER_TIMEOUT,
        "the shared cluster's two workers never showed on /crowdcompute/api/status",
    )
    assert sorted((w["name"], w["slots"]) for w in workers) == [("local-1", 1), ("local-2", 1)]

    connected, mapped = server.run_in_kernel(
        "%load_ext crowdcompute\n%crowdconnect --workers 3",
        "import os, crowdcompute\n"
        "print(os.environ['CROWDCOMPUTE_ADDRESS'])\n"
        "print('total', sum(await crowdcompute.map(abs, range(-20, 0), progress=False)))",
    )
    address = mapped.splitlines()[0]
    assert address.startswith("ws://127.0.0.1:") and address in connected  # %crowdconnect used it
    assert "remote foreman" in connected  # not an embedded cluster of the kernel's own
    assert "--workers 3 does not apply" in connected and "shared foreman" in connected, connected
    assert "total 210" in mapped
    (job,) = page_status(server)["jobs"]
    assert (job["name"], job["total"], job["completed"], job["state"]) == ("abs", 20, 20, "done")

    # The cluster stops with the server.
    assert server.proc.stop(timeout=20) == 0
    wait_for(
        lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children),
        CLUSTER_TIMEOUT,
        "the shared cluster outlived the Jupyter server",
    )


def test_page_of_a_foreman_named_by_the_environment(jupyter_server, cluster):
    server = jupyter_server(env={"CROWDCOMPUTE_ADDRESS": cluster.url, "CROWDCOMPUTE_TOKEN": cluster.token})
    assert cluster_processes(server) == []  # no cluster of its own
    assert [w["name"] for w in page_status(server)["workers"]] == ["w1"]


def test_without_a_foreman_the_page_says_how_to_get_one(jupyter_server):
    server = jupyter_server()
    status, _, body = server.get("/crowdcompute/api/status")
    assert status == 503 and b"c.CrowdCompute.local_workers" in body


def test_the_package_build_installs_the_config_file_that_enables_the_extension():
    import crowdcompute_jupyter

    shipped = JUPYTER_CONFIG / "jupyter_server_config.d" / "crowdcompute_jupyter.json"
    assert json.loads(shipped.read_text()) == {"ServerApp": {"jpserver_extensions": {"crowdcompute_jupyter": True}}}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    assert data_files["etc/jupyter/jupyter_server_config.d"] == [str(shipped.relative_to(REPO))]
    (point,) = crowdcompute_jupyter._jupyter_server_extension_points()
    assert point["app"].__name__ == "CrowdCompute"  # c.CrowdCompute.local_workers configures it
    installed = Path(sys.prefix) / "etc/jupyter/jupyter_server_config.d/crowdcompute_jupyter.json"
    if installed.exists():  # a regular (not editable) install copied it
        assert installed.read_text() == shipped.read_text()


def test_the_foremen_of_this_user_are_listed_and_each_has_its_page(jupyter_server, foreman, crowd_home):
    server = jupyter_server()  # no foreman configured: /crowdcompute/ finds this user's
    status, headers, _ = server.get("/crowdcompute/")
    assert status == 302 and headers["Location"] == f"foreman/{foreman.port}/"  # the only one: opened
    status, _, body = server.get(f"/crowdcompute/foreman/{foreman.port}/api/status")
    assert status == 200 and json.loads(body)["workers"] == []
    status, _, body = server.get(f"/crowdcompute/foreman/{foreman.port}/")
    assert status == 200 and b'src="static/status.js"' in body
    status, _, body = server.get("/crowdcompute/foremen/")
    assert status == 200 and f'href="../foreman/{foreman.port}/"'.encode() in body
    assert foreman.token.encode() not in body
    assert server.get(f"/crowdcompute/foreman/{foreman.port}/api/status", authenticated=False)[0] in (302, 403)
    status, _, body = server.get("/crowdcompute/foreman/1/api/status")  # not a foreman of this user
    assert status == 404 and b"no foreman of yours" in body

    # A second foreman (a running process of this user holds the pid): the page lists both.
    second = {"url": "ws://127.0.0.1:2", "token": "t", "pid": os.getpid()}
    (crowd_home / "foreman-2.json").write_text(json.dumps(second))
    status, _, body = server.get("/crowdcompute/")
    assert status == 200 and b"foreman/2/" in body and f"foreman/{foreman.port}/".encode() in body


def test_kernels_link_to_their_own_embedded_clusters_page(jupyter_server):
    server = jupyter_server()
    connected, card = server.run_in_kernel(
        "%load_ext crowdcompute\n%crowdconnect --workers 1",
        "from crowdcompute.api import default_client\nprint(default_client()._repr_html_())\n%crowddisconnect",
    )
    port = re.search(r"ws://127\.0\.0\.1:(\d+)", connected).group(1)
    assert f"status page: /crowdcompute/foreman/{port}/" in connected, connected
    # The client's notebook repr, like dask's Client: workers, slots and the same link.
    assert "1 worker, 1 slot" in card and f'href="/crowdcompute/foreman/{port}/"' in card, card

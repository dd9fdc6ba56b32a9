"""The joblib backend "crowdcompute": joblib and scikit-learn code, unchanged, on real workers."""

from __future__ import annotations

import pytest
from helpers import arun

from crowdcompute import CrowdComputeClient

joblib = pytest.importorskip("joblib")
import crowdcompute.joblib as crowd_joblib  # noqa: E402  (registers the backend)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """The cluster fixture named by $CROWDCOMPUTE_ADDRESS/$CROWDCOMPUTE_TOKEN, as a notebook server would."""
    monkeypatch.setenv("CROWDCOMPUTE_ADDRESS", cluster.url)
    monkeypatch.setenv("CROWDCOMPUTE_TOKEN", cluster.token)
    yield cluster
    crowd_joblib.shutdown()


def foreman_jobs(cluster) -> list[dict]:
    async def ask():
        async with CrowdComputeClient(cluster.url, token=cluster.token) as client:
            return (await client.status())["jobs"]

    return arun(ask())


def test_parallel_runs_on_the_cluster_from_the_environment(on_cluster):
    def cube(x):
        return x**3

    with joblib.parallel_config(backend="crowdcompute"):
        assert joblib.effective_n_jobs() == 2  # the cluster fixture's slots
        results = joblib.Parallel()(joblib.delayed(cube)(i) for i in range(60))
        in_order = list(joblib.Parallel(return_as="generator")(joblib.delayed(cube)(i) for i in range(5)))
    assert results == [i**3 for i in range(60)]
    assert in_order == [0, 1, 8, 27, 64]
    jobs = foreman_jobs(on_cluster)
    assert jobs and all(job["name"] == "joblib:cube" and job["state"] == "done" for job in jobs)
    assert sum(job["total"] for job in jobs) >= 2  # batches, each one job


def test_an_error_stops_the_call_with_the_original_type(on_cluster):
    def check(x):
        if x == 5:
            raise KeyError(f"no {x}")
        return x

    with pytest.raises(KeyError, match="no 5"):
        with joblib.parallel_config(backend="crowdcompute"):
            joblib.Parallel(batch_size=1)(joblib.delayed(check)(i) for i in range(20))
    # The backend is still usable after the abort.
    assert joblib.Parallel(backend="crowdcompute")(joblib.delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


def test_scikit_learn_cross_val_score(on_cluster):
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = datasets.load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300)
    local = cross_val_score(model, X, y, cv=4)
    with joblib.parallel_config(backend="crowdcompute"):
        remote = cross_val_score(model, X, y, cv=4, n_jobs=-1)
    assert list(remote) == list(local)
    assert foreman_jobs(on_cluster)  # it did run there


def test_with_no_address_an_embedded_cluster_serves_every_call(crowd_home):
    try:
        with joblib.parallel_config(backend="crowdcompute", workers=1):
            first = joblib.Parallel()(joblib.delayed(divmod)(i, 3) for i in range(6))
            second = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(4))
        (executor,) = crowd_joblib._executors.values()  # one connection shared by both calls
        assert executor.client.cluster is not None
    finally:
        crowd_joblib.shutdown()
    assert first == [divmod(i, 3) for i in range(6)] and second == [0, 1, 4, 9]
    assert not crowd_joblib._executors

"""The session's local Ray cluster, for the tests marked `ray` (tests/service/engine/ray_cluster.py)."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.importorskip("ray", reason="the `ray` extra is not installed")  # make install installs it
    from tests.service.engine.ray_cluster import ray_cluster as start

    with start() as cluster:
        yield cluster

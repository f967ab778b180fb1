"""Shared fixtures: one Ray session for the whole run, one real Redis server per module, one catalog."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One light local Ray shared by every test that needs Ray."""
    from jobs.services import start_ray

    session = start_ray(num_cpus=2, address="local")
    yield session
    session.shutdown()


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server process on a free loopback port."""
    from jobs.services import RedisServer

    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ml_catalog():
    """The MovieLens-100K catalog on default settings (built once, in memory)."""
    from catalog.build import build_movielens_catalog

    return build_movielens_catalog()

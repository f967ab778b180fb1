import os
import socket
import time

import pytest
import ray
import redis

from jobs.services import (
    RedisServer,
    ServiceError,
    connect_redis,
    ray_session,
    redact,
    redis_service,
    start_ray,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_embedded_redis_is_a_real_server_and_is_gone_after_shutdown(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with redis_service() as r:
        info = r.client.info("server")
        assert info["redis_version"].count(".") == 2
        assert info["tcp_port"] == r.server.port
        persistence = r.client.info("persistence")
        assert persistence["aof_enabled"] == 0 and persistence["rdb_bgsave_in_progress"] == 0
        r.client.set("k", "v")
        pid, port, workdir = r.server.process.pid, r.server.port, r.server.workdir
        assert workdir.is_dir()
    assert not _alive(pid)
    assert not workdir.exists()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_embedded_redis_stops_after_an_error(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(KeyError), redis_service() as r:
        pid = r.server.process.pid
        raise KeyError("boom")
    assert not _alive(pid)


def test_redis_url_is_used_when_set(monkeypatch, redis_server):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    with redis_service() as r:
        assert r.server is None
        r.client.set("from-url", "1")
    assert redis.Redis.from_url(redis_server.url).get("from-url") == b"1"


def test_unreachable_redis_url_is_a_clear_error(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:secret@127.0.0.1:{port}/0"
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        connect_redis(url, timeout_s=1)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "does not answer" in msg and "unset REDIS_URL" in msg and f"127.0.0.1:{port}" in msg
    assert "secret" not in msg  # the password is redacted
    assert redact(url) == f"redis://:***@127.0.0.1:{port}/0"


def test_bad_redis_url_and_wrong_password(redis_server):
    with pytest.raises(ServiceError, match="not a valid Redis URL"):
        connect_redis("http://127.0.0.1:1")
    with pytest.raises(ServiceError, match="refused the credentials") as err:
        connect_redis(f"redis://:wrong-pass@127.0.0.1:{redis_server.port}/0")
    assert "wrong-pass" not in str(err.value)
    assert connect_redis(redis_server.url).ping()


def test_missing_redis_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_SERVER_BIN", str(tmp_path / "redis-server"))
    with pytest.raises(ServiceError, match="REDIS_SERVER_BIN=.*not an executable"):
        RedisServer.start()


def test_server_that_does_not_come_up_reports_its_log(monkeypatch, tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: bad config' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("REDIS_SERVER_BIN", str(fake))
    with pytest.raises(ServiceError, match="did not come up.*exited with code 3"):
        RedisServer.start(attempts=1)


def test_local_ray_runs_a_task(ray_local):
    assert ray_local.started_here and ray_local.address == "local"
    assert ray.get(ray.remote(lambda x: x + 1).remote(41)) == 42
    assert ray.cluster_resources()["CPU"] == 2


def test_ray_session_leaves_a_ray_it_did_not_start(ray_local):
    """A notebook (or this test session) that already runs Ray keeps it after a job's ray_session."""
    with ray_session(address="local") as session:
        assert not session.initialized_here
    assert ray.is_initialized()
    assert ray.get(ray.remote(lambda x: x * 2).remote(21)) == 42


def test_unreachable_ray_address_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(
        ServiceError, match=r"RAY_ADDRESS='ray://127.0.0.1:\d+' does not answer.*unset RAY_ADDRESS"
    ):
        start_ray(address=f"ray://127.0.0.1:{port}", timeout_s=1)
    assert time.monotonic() - t0 < 5
    with pytest.raises(ServiceError, match="is not host:port"):
        start_ray(address="nonsense")

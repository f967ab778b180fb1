"""Issue 13, open doors and publishing: a loopback Ray with token auth, a locked-down embedded Redis,
redacted secrets, and a fenced, idempotent cache publish that never loses the live version."""

from __future__ import annotations

import os
import pickle
import subprocess

import psutil
import pytest
import ray
import redis

from explore.cache import (
    CacheError,
    CacheWriter,
    SecretURL,
    encode_entry,
    gc_staging,
    live_version,
    redact_url,
    staging_versions,
    version_meta,
)
from jobs.services import RedisServer, ServiceError, connect_redis, redact

# ------------------------------------------------------------------------------------------
# Ray


def _listening(pid_root: psutil.Process) -> list[tuple[str, str, int]]:
    out = []
    for p in [pid_root, *pid_root.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(p.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def test_local_ray_listens_on_loopback_only(ray_local):
    """Every server of the local session (GCS, raylet, workers, agents, metrics) is bound to loopback."""
    assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker is up
    listening = _listening(psutil.Process())
    names = {name for name, _, _ in listening}
    assert "gcs_server" in names and "raylet" in names  # the session's servers were found
    open_doors = [(n, ip, port) for n, ip, port in listening if not _loopback(ip)]
    assert not open_doors, f"listening on a non-loopback address: {open_doors}"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_local_ray_refuses_a_client_without_the_token(ray_local):
    import grpc

    token_file = ray_local.auth_token_path
    assert token_file and os.stat(token_file).st_mode & 0o777 == 0o600
    channel = grpc.insecure_channel(ray.get_runtime_context().gcs_address)
    call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo")
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------------------------------
# Redis


def test_embedded_redis_needs_its_password_and_has_no_config_command(redis_server):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_server.port).ping()
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping()
    for command in (
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "GET", "*"),
        ("MODULE", "LIST"),
        ("DEBUG", "SLEEP", "0"),
    ):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)


def test_redis_password_is_in_no_listing_or_repr(redis_server):
    assert len(redis_server.password) >= 24
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert f":{redis_server.port}" in listing  # the server is listed
    assert redis_server.password not in listing
    assert redis_server.password not in " ".join(psutil.Process(redis_server.process.pid).cmdline())
    assert redis_server.password not in repr(redis_server)
    assert redis_server.password not in redact(redis_server.url)
    assert not list(redis_server.workdir.glob("*.conf"))  # the config file holding it is gone


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://s3cret@host:6379/0", "redis://:***@host:6379/0"),  # a password in the user slot
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redaction(url, shown):
    assert redact(url) == shown == redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:99999/0",  # port out of range
        "redis://:s3cret@[::1/0",  # unparseable host
        "s3cret@127.0.0.1:6379",  # no scheme
        "redis://:s3cret@127.0.0.1:6379/notadb",
        "redis://:s3c/ret@127.0.0.1:6379/0",  # an unencoded '/' cuts the host short: "s3c" is the port
    ],
)
def test_invalid_redis_url_names_redis_url_and_hides_the_password(url):
    with pytest.raises(ServiceError) as err:
        connect_redis(url, timeout_s=0.5)
    msg = str(err.value)
    assert "REDIS_URL" in msg and "s3c" not in msg
    with pytest.raises(ServiceError, match="--redis-url") as err:
        connect_redis(url, timeout_s=0.5, name="--redis-url")
    assert "s3c" not in str(err.value)


def test_secret_url_travels_redacted():
    url = SecretURL("redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(url) and "s3cret" not in str(url) and "s3cret" not in repr({"url": url})
    assert pickle.loads(pickle.dumps(url)).reveal() == "redis://:s3cret@127.0.0.1:6379/0"


# ------------------------------------------------------------------------------------------
# Publishing


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def _publish(client, ns, n, meta=None, **commit):
    w = CacheWriter(client, ns)
    w.begin({"k": 2, "catalog_signature": "cat-a", **(meta or {})})
    written = w.write((f"{i},{i + 1}", encode_entry([i % 7], [0.5])) for i in range(n))
    return w, w.commit(written, **commit)


def test_the_publish_that_began_first_but_commits_last_is_refused(redis_server):
    client, ns = _client(redis_server), "fence"
    _publish(client, ns, 10)
    older = CacheWriter(client, ns)
    older.begin({"k": 2, "catalog_signature": "cat-a", "novelty_model": "old"})
    n_old = older.write((f"{i},{i + 1}", encode_entry([1], [0.4])) for i in range(10))
    _, newer = _publish(client, ns, 10, {"novelty_model": "new"})
    with pytest.raises(CacheError, match="went live since") as err:
        older.commit(n_old)
    assert newer.version in str(err.value)
    assert live_version(client, ns) == newer.version  # the newer model stays live
    assert version_meta(client, ns, older.version)["status"] == "writing"  # nothing of it went live


def test_a_retried_commit_reports_the_same_success(redis_server):
    client, ns = _client(redis_server), "retry"
    writer, first = _publish(client, ns, 5)
    again = writer.commit(5)  # e.g. the first reply was lost
    assert again == first and live_version(client, ns) == writer.version


def test_a_version_for_another_k_or_catalog_is_refused_unless_forced(redis_server):
    client, ns = _client(redis_server), "compat"
    _, live = _publish(client, ns, 5)
    for meta in ({"k": 3}, {"catalog_signature": "cat-b"}):
        with pytest.raises(CacheError, match="--force-publish"):
            CacheWriter(client, ns).begin({"k": 2, "catalog_signature": "cat-a", **meta})
    assert live_version(client, ns) == live.version
    w = CacheWriter(client, ns)
    w.begin({"k": 3, "catalog_signature": "cat-a"}, force=True)
    assert (
        w.commit(w.write((f"1,2,{i}", encode_entry([4], [0.5])) for i in range(5)), force=True).previous
        == live.version
    )


def test_a_version_far_smaller_than_live_is_refused(redis_server):
    client, ns = _client(redis_server), "shrink"
    _, live = _publish(client, ns, 100)
    with pytest.raises(CacheError, match=r"holds 10 entries, fewer than 0.5 x the 100"):
        _publish(client, ns, 10)
    assert live_version(client, ns) == live.version
    _, smaller = _publish(client, ns, 10, min_entries_ratio=0.05)  # configurable
    assert live_version(client, ns) == smaller.version
    _publish(client, ns, 1, force=True)


def test_an_evicting_redis_is_refused_at_begin():
    server = RedisServer.start(maxmemory="64mb", maxmemory_policy="allkeys-lru")
    try:
        client = _client(server)
        with pytest.raises(CacheError, match="allkeys-lru.*noeviction"):
            CacheWriter(client, "evict").begin({"k": 2})
        CacheWriter(client, "evict").begin({"k": 2}, allow_evictable=True)
    finally:
        server.stop()


def test_redis_out_of_memory_is_a_cache_error_with_the_fix():
    server = RedisServer.start(maxmemory="3mb", maxmemory_policy="noeviction")
    try:
        client = _client(server)
        w = CacheWriter(client, "oom", chunk=500)
        w.begin({"k": 2})
        big = encode_entry(list(range(200)), [0.5] * 200)
        with pytest.raises(CacheError, match="ran out of memory.*maxmemory") as err:
            w.write((f"{i},{i}", big) for i in range(100_000))
        assert "Traceback" not in str(err.value)
    finally:
        server.stop()


def test_cache_error_in_a_ray_actor_reaches_the_driver_as_a_cache_error(ray_local):
    """A Redis OOM inside the pipeline's writing actor ends the job as a user error (exit 2), not a Ray
    traceback."""
    import pyarrow as pa

    from explore.stage import CacheWriteStage
    from jobs.best_of_n import cache_error_in

    server = RedisServer.start(maxmemory="3mb", maxmemory_policy="noeviction")
    try:
        w = CacheWriter(_client(server), "oom-ray")
        w.begin({"k": 2})
        rows = pa.table(
            {
                "history_key": [[i, i + 1] for i in range(20_000)],
                "selected": [list(range(100))] * 20_000,
                "selected_scores": [[0.5] * 100] * 20_000,
            }
        )
        ds = ray.data.from_arrow(rows).map_batches(
            CacheWriteStage,
            fn_constructor_kwargs={
                "url": SecretURL(server.url),
                "version": w.version,
                "namespace": "oom-ray",
            },
            batch_size=2000,
            batch_format="pyarrow",
            concurrency=1,
            num_cpus=0.1,
        )
        with pytest.raises(Exception) as err:
            ds.materialize()
        cause = cache_error_in(err.value)
        assert isinstance(cause, CacheError) and "ran out of memory" in str(cause)
        assert server.password not in str(err.value)
    finally:
        server.stop()


def test_writing_actors_honour_the_staging_ttl(redis_server):
    import pyarrow as pa

    from explore.stage import CacheWriteStage

    client, ns = _client(redis_server), "ttl"
    w = CacheWriter(client, ns, staging_ttl_s=120)
    w.begin({"k": 2})
    stage = CacheWriteStage(SecretURL(redis_server.url), w.version, ns, staging_ttl_s=120)
    stage(pa.table({"history_key": [[1, 2]], "selected": [[3]], "selected_scores": [[0.5]]}))
    assert 0 < client.ttl(w.keys.data(w.version)) <= 120
    assert 0 < client.ttl(w.keys.meta(w.version)) <= 120


def test_abandoned_versions_are_listed_and_collected(redis_server):
    client, ns = _client(redis_server), "gc"
    _publish(client, ns, 5)
    _, live = _publish(client, ns, 5)
    dead = CacheWriter(client, ns)  # a killed publisher: begun, written, never committed
    dead.begin({"k": 2})
    dead.write([("1,2", encode_entry([3], [0.5]))])
    active = CacheWriter(client, ns)
    active.begin({"k": 2})
    listed = {v.version: v for v in staging_versions(client, ns)}
    assert set(listed) == {dead.version, active.version}
    assert listed[dead.version].fields == 1 and listed[dead.version].status == "writing"
    assert gc_staging(client, ns, idle_s=3600) == []  # both wrote recently: kept
    client.hset(dead.keys.meta(dead.version), "updated_ms", 0)  # its writer went quiet long ago
    client.hset(active.keys.meta(active.version), "updated_ms", 0)
    client.hset(active.keys.meta(active.version), "created_ms", 0)
    assert sorted(gc_staging(client, ns, idle_s=60)) == sorted([dead.version, active.version])
    assert not client.exists(dead.keys.data(dead.version), dead.keys.meta(dead.version))
    assert (
        live_version(client, ns) == live.version
        and client.hlen(live_keys := f"{{{ns}}}:v:{live.version}") == 5
    ), live_keys


def test_abort_frees_a_large_hash_with_unlink(redis_server):
    client, ns = _client(redis_server), "unlink"
    w = CacheWriter(client, ns)
    w.begin({"k": 2})
    w.write((f"{i},{i}", b"1:0.5") for i in range(2000))

    def calls(name: str) -> int:
        return int(client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))

    unlinks, dels = calls("unlink"), calls("del")
    w.abort()
    assert calls("unlink") == unlinks + 1 and calls("del") == dels
    assert not client.exists(w.keys.data(w.version))


def test_jobs_cache_lists_and_collects_abandoned_versions(redis_server, capsys):
    from jobs.cache import main

    client, ns = _client(redis_server), "cli-gc"
    _, live = _publish(client, ns, 3)
    dead = CacheWriter(client, ns)
    dead.begin({"k": 2})
    dead.write([("1,2", encode_entry([3], [0.5]))])
    common = ["--redis-url", redis_server.url, "--namespace", ns]
    with pytest.raises(SystemExit) as exit_:
        main(["versions", *common])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"{live.version}  went live" in out
    assert f"{dead.version}  writing: 1 fields" in out
    with pytest.raises(SystemExit):
        main(["gc", "--dry-run", "--idle-s", "0", *common])
    assert f"would remove 1 version(s) idle for 0 s: {dead.version}" in capsys.readouterr().out
    assert client.exists(dead.keys.data(dead.version))
    with pytest.raises(SystemExit):
        main(["gc", "--idle-s", "0", *common])
    assert f"removed 1 abandoned version(s): {dead.version}" in capsys.readouterr().out
    assert not client.exists(dead.keys.data(dead.version)) and live_version(client, ns) == live.version
    assert redis_server.password not in out

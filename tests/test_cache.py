"""The Redis cache of best-of-n clusters, against a real redis-server: encoding, lookups with back-off,
atomic publish and rollback, and a publisher killed mid-way."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from uuid import uuid4

import pytest
import redis

from explore.cache import (
    CacheError,
    CacheKeys,
    CacheReader,
    CacheWriter,
    decode_entry,
    encode_entry,
    key_field,
    list_versions,
    live_version,
    lookup_fields,
    new_version,
    rollback,
    version_meta,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEEK = 7 * 86_400


@pytest.fixture
def client(redis_server):
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


@pytest.fixture
def ns():
    return f"t{uuid4().hex[:8]}"


def publish(client, ns, entries: dict[str, tuple[list[int], list[float]]], **meta) -> CacheWriter:
    writer = CacheWriter(client, ns, chunk=2)
    writer.begin({"k": 2, **meta})
    n = writer.write((f, encode_entry(c, s)) for f, (c, s) in entries.items())
    writer.commit(expected_entries=n)
    return writer


V1 = {
    "3,17": ([5, 17, 8, 9], [0.9, 0.8, 0.7, 0.6]),
    "17": ([2, 3, 4], [0.5, 0.4, 0.3]),
    "*": ([1, 2], [0.2, 0.1]),
}


def test_entry_round_trip_with_golden_text():
    raw = encode_entry([17, 5], [0.812341, 0.70112])
    assert raw == b"17:0.81234;5:0.70112"
    assert decode_entry(raw) == ([17, 5], [0.81234, 0.70112])
    assert decode_entry(raw.decode()) == ([17, 5], [0.81234, 0.70112])
    assert decode_entry(encode_entry([], [])) == ([], [])


@pytest.mark.parametrize(
    "clusters, scores, names",
    [([1, 2], [0.5], "2 clusters"), ([1], [math.nan], "nan"), ([1], [math.inf], "inf"), ([-1], [0.5], "-1")],
)
def test_encode_rejects_bad_entries(clusters, scores, names):
    with pytest.raises(ValueError, match=names):
        encode_entry(clusters, scores)


def test_decode_rejects_malformed_text():
    with pytest.raises(ValueError, match="'17-0.5'"):
        decode_entry(b"17-0.5")


def test_fields_and_versions():
    assert key_field((3, 17)) == "3,17"
    assert lookup_fields((3, 17, 4)) == ["3,17,4", "17,4", "4", "*"]
    v = new_version()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", v)
    assert CacheKeys("x").data(v) == "{x}:v:" + v
    with pytest.raises(ValueError, match="namespace"):
        CacheKeys("a{b}")


def test_lookup_exact_backoff_global_exclusions_and_top(client, ns):
    writer = publish(client, ns, V1, novelty_model="runs/novelty", alignment_model="runs/align")
    reader = CacheReader(client, ns, k=2)

    hit = reader.lookup((3, 17))
    assert (hit.level, hit.field, hit.version) == ("exact", "3,17", writer.version)
    assert hit.clusters == (5, 8, 9)  # 17 is in the key
    assert hit.scores == (0.9, 0.7, 0.6)
    assert hit.models["novelty_model"] == "runs/novelty" and hit.models["alignment_model"] == "runs/align"
    assert hit.models["status"] == "live" and hit.models["entries"] == "3"

    assert reader.lookup((3, 17), exclude=[8], top=1).clusters == (5,)
    assert reader.lookup((3, 17), top=2).scores == (0.9, 0.7)

    backoff = reader.lookup((9, 17))
    assert (backoff.level, backoff.field, backoff.clusters) == ("backoff", "17", (2, 3, 4))

    glob = reader.lookup((4, 6), exclude={2})
    assert (glob.level, glob.field, glob.clusters, glob.scores) == ("global", "*", (1,), (0.2,))


def test_lookup_many_matches_lookup_one_by_one(client, ns):
    publish(client, ns, V1)
    reader = CacheReader(client, ns, k=2)
    keys = [(3, 17), (9, 17), (4, 6), (3, 17)]
    excludes = [[5], [], [1], []]
    many = reader.lookup_many(keys, excludes=excludes, top=2)
    assert many == [reader.lookup(k, exclude=e, top=2) for k, e in zip(keys, excludes, strict=True)]
    assert [h.level for h in many] == ["exact", "backoff", "global", "exact"]
    with pytest.raises(ValueError, match="excludes has 1 items for 4 keys"):
        reader.lookup_many(keys, excludes=[[]])


def test_async_reader_and_guarded_cache_answer_as_the_sync_reader(redis_server, client, ns):
    """The endpoint's path (redis.asyncio, one reader per event loop) gives the sync reader's hits: exact,
    back-off, global, no live version, a new version's meta; a dead Redis degrades to None, never raises."""
    import asyncio

    import redis.asyncio

    from explore.cache import AsyncCacheReader
    from serving.cache_client import GuardedCache

    reader = CacheReader(client, ns, k=2)
    cases = [((3, 17), (), None), ((3, 17), [8], 1), ((9, 17), (), 2), ((4, 6), {2}, None)]

    async def both(areader):
        got = [await areader.lookup(k, exclude=e, top=t) for k, e, t in cases]
        return got, await areader.lookup_global(exclude=[1])

    async def with_client(fn):
        c = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            return await fn(AsyncCacheReader(c, ns, k=2))
        finally:
            await c.aclose()

    none_live = asyncio.run(with_client(lambda r: r.lookup((3, 17))))
    assert none_live == reader.lookup((3, 17)) and none_live.version is None
    publish(client, ns, V1, novelty_model="m1")
    got, glob = asyncio.run(with_client(both))
    assert got == [reader.lookup(k, exclude=e, top=t) for k, e, t in cases]
    assert [h.level for h in got] == ["exact", "exact", "backoff", "global"] and got[0].models[
        "novelty_model"
    ] == "m1"
    assert glob == reader.lookup_global(exclude=[1]) and glob.clusters == (2,)
    with pytest.raises(ValueError, match="last 2 cluster ids"):
        asyncio.run(with_client(lambda r: r.lookup((3,))))

    cache = GuardedCache(redis_server.url, namespace=ns, k=2)
    for _ in range(2):  # two event loops (asyncio.run twice): each gets its own connections
        hit = asyncio.run(cache.lookup((3, 17), [3], 2))
        assert hit == cache.lookup_sync((3, 17), [3], 2) and hit.clusters == (5, 8)
    publish(client, ns, {**V1, "3,17": ([7], [0.5])}, novelty_model="m2")  # a new version: its meta is read
    hit = asyncio.run(cache.lookup((3, 17), [], 4))
    assert hit.clusters == (7,) and hit.models["novelty_model"] == "m2" and cache.errors == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = GuardedCache(f"redis://127.0.0.1:{sock.getsockname()[1]}/0", namespace=ns, k=2, failures=2)
    assert asyncio.run(dead.lookup((3, 17), [], 4)) is None and dead.errors == 1
    assert asyncio.run(dead.lookup(None, [], 4)) is None and dead.breaker.state == "open"


def test_new_version_replaces_the_old_one_whole_and_rollback_restores_it(client, ns):
    v1 = publish(client, ns, V1, novelty_model="m1").version
    reader = CacheReader(client, ns, k=2)
    assert reader.lookup((3, 17)).version == v1

    v2_entries = {"17": ([40, 41], [0.9, 0.8]), "*": ([42], [0.5])}  # no full entry for (3, 17)
    w2 = CacheWriter(client, ns, chunk=1)
    w2.begin({"k": 2, "novelty_model": "m2"})
    result = w2.commit(expected_entries=w2.write((f, encode_entry(*e)) for f, e in v2_entries.items()))
    v2 = w2.version
    assert (result.version, result.previous, result.entries) == (v2, v1, 2)

    hit = reader.lookup((3, 17))  # falls back within v2, never to v1's exact entry
    assert (hit.version, hit.level, hit.clusters, hit.models["novelty_model"]) == (
        v2,
        "backoff",
        (40, 41),
        "m2",
    )
    assert live_version(client, ns) == v2
    assert client.get(CacheKeys(ns).previous).decode() == v1
    assert client.ttl(CacheKeys(ns).data(v2)) == -1 and client.ttl(CacheKeys(ns).meta(v2)) == -1
    assert 0 < client.ttl(CacheKeys(ns).data(v1)) <= WEEK
    assert 0 < client.ttl(CacheKeys(ns).meta(v1)) <= WEEK
    assert version_meta(client, ns, v1)["status"] == "retired"
    assert [v for v, _ in list_versions(client, ns)] == [v2, v1]

    assert rollback(client, ns, keep_current_s=600) == v1
    assert live_version(client, ns) == v1
    assert client.get(CacheKeys(ns).previous).decode() == v2
    assert client.ttl(CacheKeys(ns).data(v1)) == -1 and client.ttl(CacheKeys(ns).meta(v1)) == -1
    assert 0 < client.ttl(CacheKeys(ns).data(v2)) <= 600
    assert (version_meta(client, ns, v1)["status"], version_meta(client, ns, v2)["status"]) == (
        "live",
        "retired",
    )
    hit = reader.lookup((3, 17))
    assert (hit.version, hit.level, hit.clusters, hit.models["novelty_model"]) == (
        v1,
        "exact",
        (5, 8, 9),
        "m1",
    )


def test_versions_list_in_switch_order_even_within_one_millisecond(client, ns):
    published = [publish(client, ns, V1).version for _ in range(6)]  # several switches per ms
    assert [v for v, _ in list_versions(client, ns)] == published[::-1]  # newest switch first
    ms = [int(s) for _, s in client.zrange(CacheKeys(ns).versions, 0, -1, withscores=True)]
    assert ms == sorted(set(ms)) and len(ms) == 6  # strictly increasing: the order of the switches


def test_commit_with_the_wrong_count_changes_nothing(client, ns):
    v1 = publish(client, ns, V1).version
    writer = CacheWriter(client, ns)
    writer.begin({"k": 2})
    writer.write([("3,17", encode_entry([1], [0.5]))])
    with pytest.raises(CacheError, match=f"holds 1 entries, expected 2.*live version is still {v1}"):
        writer.commit(expected_entries=2)
    assert live_version(client, ns) == v1
    assert version_meta(client, ns, writer.version)["status"] == "writing"
    assert CacheReader(client, ns, k=2).lookup((3, 17)).clusters == (5, 8, 9)

    writer.abort()
    assert not client.exists(CacheKeys(ns).data(writer.version), CacheKeys(ns).meta(writer.version))
    with pytest.raises(CacheError, match="has no meta"):
        writer.commit(expected_entries=1)


def test_a_committed_version_refuses_begin_write_and_abort(client, ns):
    writer = publish(client, ns, V1)
    with pytest.raises(ValueError, match="already exists"):
        CacheWriter(client, ns, writer.version).begin({})
    late = CacheWriter(client, ns, writer.version)  # e.g. a retried Ray task
    with pytest.raises(CacheError, match="is live, not being written"):
        late.write([("3,17", encode_entry([1], [0.5]))])
    assert client.ttl(CacheKeys(ns).data(writer.version)) == -1  # still never expires
    with pytest.raises(CacheError, match="is live"):
        writer.abort()
    with pytest.raises(ValueError, match="set by the cache"):
        CacheWriter(client, ns).begin({"status": "live"})


KILLED_WRITER = """
import os, signal, redis
from explore.cache import CacheWriter, encode_entry

def die(index):
    if index == 3:
        os.kill(os.getpid(), signal.SIGKILL)

writer = CacheWriter(redis.Redis.from_url({url!r}), {ns!r}, {version!r}, chunk=500)
writer.begin({{"k": 2}})
writer.write(((f"{{i}},{{i + 1}}", encode_entry([i + 2], [0.5])) for i in range(20_000)), on_chunk=die)
"""


def test_a_publisher_killed_mid_way_leaves_the_live_version_and_expiring_keys(client, ns, redis_server):
    v1 = publish(client, ns, V1).version
    version = new_version()
    script = KILLED_WRITER.format(url=redis_server.url, ns=ns, version=version)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    keys = CacheKeys(ns)
    assert live_version(client, ns) == v1
    assert client.get(keys.previous) is None
    hit = CacheReader(client, ns, k=2).lookup((3, 17))
    assert (hit.version, hit.clusters) == (v1, (5, 8, 9))
    assert client.hlen(keys.data(version)) == 4 * 500  # chunks 0..3 were stored
    assert 0 < client.ttl(keys.data(version)) <= 86_400
    assert 0 < client.ttl(keys.meta(version)) <= 86_400
    assert version_meta(client, ns, version)["status"] == "writing"
    assert [v for v, _ in list_versions(client, ns)] == [v1]
    with pytest.raises(CacheError, match=f"holds 2000 entries, expected 20000.*still {v1}"):
        CacheWriter(client, ns, version).commit(expected_entries=20_000)
    assert live_version(client, ns) == v1


def test_reader_without_a_live_version_misses_and_rejects_bad_keys(client, ns):
    reader = CacheReader(client, ns, k=2)
    assert reader.lookup((3, 17)) == reader.lookup_many([(3, 17)])[0]
    hit = reader.lookup((3, 17))
    assert (hit.version, hit.level, hit.clusters, hit.field, dict(hit.models)) == (None, "miss", (), None, {})
    for bad in [(3,), (3, 17, 4), (3, -1), (3, 1.5)]:
        with pytest.raises(ValueError, match="history_key"):
            reader.lookup(bad)
    with pytest.raises(ValueError, match="top=0"):
        reader.lookup((3, 17), top=0)


def test_reader_refuses_a_version_built_for_another_k(client, ns):
    publish(client, ns, {"*": ([1], [0.5])}, k=3)
    with pytest.raises(CacheError, match="built for k=3 but this reader has k=2"):
        CacheReader(client, ns, k=2).lookup((3, 17))


def test_rollback_needs_a_previous_version_that_has_not_expired(client, ns):
    with pytest.raises(CacheError, match="no previous version"):
        rollback(client, ns)
    v1 = publish(client, ns, V1).version
    with pytest.raises(CacheError, match=f"no previous version.*live is {v1}"):
        rollback(client, ns)
    v2 = publish(client, ns, V1).version
    client.delete(CacheKeys(ns).data(v1))  # as if keep_previous_s had passed
    with pytest.raises(
        CacheError, match=f"previous version {v1} .* has expired; the live version is still {v2}"
    ):
        rollback(client, ns)
    assert live_version(client, ns) == v2

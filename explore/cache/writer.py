"""Publishing a version: the writer, the atomic fenced commit, abort, rollback, and the clean-up of
versions abandoned by killed publishers (the rules are in explore/cache/__init__.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count, islice

from explore.cache.layout import (
    _NAME,
    EVICTING_POLICIES,
    RESERVED_META,
    CacheError,
    CacheKeys,
    _text,
    live_version,
    new_version,
    version_meta,
)

# The server's clock in unix ms, for the scripts below (one definition; TIME is allowed in scripts).
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: data, meta.  ARGV[1]: TTL seconds, ARGV[2..]: field, value, field, value, ...
# Writes only into a version whose status is "writing", so a late writer (a retried Ray task) can never
# put a TTL on a committed version. Returns the status it found.
# The version that stops being live: marked retired, its data and meta expire after ttl seconds (the rollback
# window of the one replacing it).
_RETIRE = """
local function retire(prefix, version, ttl)
  redis.call('HSET', prefix .. version .. ':meta', 'status', 'retired')
  redis.call('EXPIRE', prefix .. version, ttl)
  redis.call('EXPIRE', prefix .. version .. ':meta', ttl)
end
"""

_WRITE_CHUNK = (
    _NOW_MS
    + """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'writing' then return status end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[2], 'updated_ms', now_ms())
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return status
"""
)

# KEYS: live, previous, versions, data, meta.  ARGV: version, expected entries, keep_previous_s, prefix,
# min entries ratio against the live version (0: no check), force ('1': skip the ratio check).
# The old version's keys are built from prefix: they carry the same {ns} hash tag, hence the same slot.
# Returns {'ok', old live or '', entries, now ms}, {'already', previous or '', entries, live ms} when this
# version is live already (a retried commit), or {reason, live or '', detail}; on a reason, nothing changed.
_COMMIT = (
    _NOW_MS
    + _RETIRE
    + """
local live = redis.call('GET', KEYS[1]) or ''
local status = redis.call('HGET', KEYS[5], 'status')
if not status then return {'missing', live, ''} end
if status == 'live' and live == ARGV[1] then
  return {'already', redis.call('GET', KEYS[2]) or '', redis.call('HGET', KEYS[5], 'entries'),
          redis.call('HGET', KEYS[5], 'live_ms')}
end
if status ~= 'writing' then return {'status', live, status} end
local base = redis.call('HGET', KEYS[5], 'base_version') or ''
if live ~= base then return {'stale', live, base} end
local n = redis.call('HLEN', KEYS[4])
if n ~= tonumber(ARGV[2]) then return {'count', live, n} end
if live ~= '' and ARGV[6] ~= '1' then
  local live_n = tonumber(redis.call('HGET', ARGV[4] .. live .. ':meta', 'entries') or '0') or 0
  if n < live_n * tonumber(ARGV[5]) then return {'shrink', live, n .. '/' .. live_n} end
end
local now = now_ms()
local last = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if last[2] and now <= tonumber(last[2]) then now = tonumber(last[2]) + 1 end  -- switches stay ordered
redis.call('HSET', KEYS[5], 'status', 'live', 'entries', n, 'live_ms', now)
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('SET', KEYS[1], ARGV[1])
if live ~= '' then
  redis.call('SET', KEYS[2], live)
  retire(ARGV[4], live, ARGV[3])
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
return {'ok', live, n, now}
"""
)

# KEYS: live, previous, data, meta.  ARGV: version.  Deletes the version unless it is live or previous.
# UNLINK: a large hash is freed in the background, not while readers wait.
_ABORT = """
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
return redis.call('UNLINK', KEYS[3], KEYS[4])
"""

# KEYS: live, previous, data, meta.  ARGV: version, idle ms.  Removes a version still being written whose
# last chunk is older than idle ms (or a data hash whose meta is gone), never the live or previous one.
# Returns 1 when removed, 0 when kept.
_GC = (
    _NOW_MS
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[4], 'status')
if status and status ~= 'writing' then return 0 end
if status then
  local now = now_ms()
  local last = tonumber(redis.call('HGET', KEYS[4], 'updated_ms') or redis.call('HGET', KEYS[4], 'created_ms') or '0')
  if now - last < tonumber(ARGV[2]) then return 0 end
end
redis.call('UNLINK', KEYS[3], KEYS[4])
return 1
"""
)

# KEYS: live, previous, versions.  ARGV: prefix, keep_current_s.  Keys built from prefix as in _COMMIT.
# Returns {'ok', restored, demoted or ''} or {reason, live or '', previous or ''}; on a reason, nothing changed.
_ROLLBACK = (
    _NOW_MS
    + _RETIRE
    + """
local live = redis.call('GET', KEYS[1]) or ''
local prev = redis.call('GET', KEYS[2]) or ''
if prev == '' then return {'none', live, ''} end
if redis.call('EXISTS', ARGV[1] .. prev) == 0 then return {'expired', live, prev} end
redis.call('PERSIST', ARGV[1] .. prev)
redis.call('PERSIST', ARGV[1] .. prev .. ':meta')
redis.call('HSET', ARGV[1] .. prev .. ':meta', 'status', 'live')
redis.call('SET', KEYS[1], prev)
if live ~= '' then
  redis.call('SET', KEYS[2], live)
  retire(ARGV[1], live, ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
local now = now_ms()
local last = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if last[2] and now <= tonumber(last[2]) then now = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[3], now, prev)
return {'ok', prev, live}
"""
)


@dataclass(frozen=True)
class PublishResult:
    version: str  # now live
    previous: str | None  # live before it (the rollback target); None on a first publish
    entries: int  # fields in the new version's hash
    switched_ms: int  # server time of the switch, unix ms


class CacheWriter:
    """Writes one version of the cache, then makes it live in one atomic switch.

    Parts of a version may be written from several processes (Ray actors): the driver calls `begin`,
    each actor builds a CacheWriter with the same version and calls `write`, the driver calls `commit`.

    Args:
        client: a redis.Redis.
        namespace: the cache's key namespace.
        version: the version to write; a new time-sortable id when None.
        staging_ttl_s: seconds an unfinished version lives after its last chunk, so a killed writer's
            keys expire by themselves.
        chunk: fields per write round trip.
    """

    def __init__(
        self,
        client,
        namespace: str = "explore",
        version: str | None = None,
        *,
        staging_ttl_s: int = 86_400,
        chunk: int = 1000,
    ):
        self.client = client
        self.keys = CacheKeys(namespace)
        self.version = version or new_version()
        if not _NAME.fullmatch(self.version):
            raise ValueError(f"version={self.version!r}: use letters, digits, '_', '.' or '-'.")
        if staging_ttl_s < 1 or chunk < 1:
            raise ValueError(f"staging_ttl_s={staging_ttl_s} and chunk={chunk}: both must be >= 1.")
        self.staging_ttl_s = staging_ttl_s
        self.chunk = chunk
        self._write_chunk = client.register_script(_WRITE_CHUNK)
        self._commit = client.register_script(_COMMIT)
        self._abort = client.register_script(_ABORT)

    def begin(
        self, meta: Mapping[str, str | int | float], *, force: bool = False, allow_evictable: bool = False
    ) -> None:
        """Marks the version as being written, with the publisher's meta (models, K, catalog, ...), and
        records the live version it will replace (the commit is refused if another one goes live meanwhile).

        Refuses (CacheError): a meta whose k or catalog_signature differs from the live version's (unless
        force: a deliberate change of K or catalog, after which old readers miss), and a Redis whose
        maxmemory-policy may evict the live version (unless allow_evictable).
        """
        reserved = sorted(set(meta) & set(RESERVED_META))
        if reserved:
            raise ValueError(f"meta keys {reserved} are set by the cache itself; rename them.")
        meta_key = self.keys.meta(self.version)
        ns = self.keys.namespace
        with redis_errors("begin", self.version):
            live = live_version(self.client, ns)
            if self.client.exists(meta_key) or live == self.version:
                raise ValueError(
                    f"version={self.version!r} already exists in namespace {ns!r}; "
                    "publish under a new version (leave version=None for a fresh one)."
                )
            if not allow_evictable:
                check_eviction_policy(self.client)
            if live and not force:
                live_meta = version_meta(self.client, ns, live)
                for name in ("k", "catalog_signature"):
                    ours, theirs = meta.get(name), live_meta.get(name)
                    if ours is not None and theirs is not None and str(ours) != theirs:
                        raise CacheError(
                            f"the new version has {name}={ours} but the live version {live} of namespace {ns!r} "
                            f"has {name}={theirs}: readers built for the live one would miss or misread it. "
                            "Publish into another --namespace, or force the publish (--force-publish) if the "
                            "change is deliberate."
                        )
            fields = {k: str(v) for k, v in meta.items()}
            fields.update(
                status="writing", created_ms=str(time.time_ns() // 1_000_000), base_version=live or ""
            )
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(meta_key, mapping=fields)
            pipe.expire(meta_key, self.staging_ttl_s)
            pipe.execute()

    def write(
        self, entries: Iterable[tuple[str, bytes]], on_chunk: Callable[[int], None] | None = None
    ) -> int:
        """Writes (field, encoded entry) pairs in chunks; calls on_chunk(i) once chunk i is stored.

        Returns the number of fields written. Refuses (CacheError) a version that is not being written.
        """
        keys = [self.keys.data(self.version), self.keys.meta(self.version)]
        entries = iter(entries)
        written = 0
        for index in count():
            pairs = list(islice(entries, self.chunk))
            if not pairs:
                return written
            args = [self.staging_ttl_s, *(x for pair in pairs for x in pair)]
            with redis_errors(f"write (chunk {index}, after {written} fields)", self.version):
                status = self._write_chunk(keys=keys, args=args)
            if status is None or _text(status) != "writing":
                raise CacheError(
                    f"version {self.version} is {'missing' if status is None else _text(status)}, not being "
                    f"written; wrote {written} fields before chunk {index}. Call begin() first; after a "
                    "commit or abort, publish a new version."
                )
            written += len(pairs)
            if on_chunk is not None:
                on_chunk(index)

    def commit(
        self,
        expected_entries: int,
        keep_previous_s: int = 7 * 86_400,
        *,
        min_entries_ratio: float = 0.5,
        force: bool = False,
    ) -> PublishResult:
        """Makes the version live in one atomic step if it holds exactly expected_entries fields, the live
        version is still the one seen at `begin`, and it holds at least min_entries_ratio times the live
        version's entries (unless force: a deliberate shrink, e.g. a smaller key set).

        The version live before it becomes `previous` and expires after keep_previous_s. Retrying a commit
        whose reply was lost returns the same result once the version is live.
        """
        if expected_entries < 1 or keep_previous_s < 1 or not 0 <= min_entries_ratio <= 1:
            raise ValueError(
                f"expected_entries={expected_entries}, keep_previous_s={keep_previous_s}, min_entries_ratio="
                f"{min_entries_ratio}: give entries and seconds >= 1 and a ratio in [0, 1]."
            )
        k = self.keys
        with redis_errors("commit", self.version):
            reply = self._commit(
                keys=[k.live, k.previous, k.versions, k.data(self.version), k.meta(self.version)],
                args=[
                    self.version,
                    expected_entries,
                    keep_previous_s,
                    k.prefix,
                    min_entries_ratio,
                    "1" if force else "0",
                ],
            )
        outcome, live, detail = _text(reply[0]), _text(reply[1]) or None, reply[2]
        if outcome in ("ok", "already"):
            return PublishResult(self.version, live, int(detail), int(reply[3]))
        detail = "" if detail is None else str(_text(detail) if isinstance(detail, bytes) else detail)
        why = {
            "missing": "has no meta: begin() was not called, or it was aborted, or it expired "
            f"(staging TTL {self.staging_ttl_s} s after its last chunk)",
            "status": f"is {detail}, not being written: it was committed before and is no longer live",
            "count": f"holds {detail} entries, expected {expected_entries}: a writer failed; write the "
            "missing parts and commit again, or abort()",
            "stale": f"was begun when {detail or 'no version'} was live, but {live} went live since (another "
            "publish finished first); it was not made live, so the newer version stays. Re-run the publish "
            "on the current models, or roll back first if the newer version is wrong",
            "shrink": f"holds {detail.split('/')[0]} entries, fewer than {min_entries_ratio:g} x the "
            f"{detail.split('/')[-1]} of the live version: a smaller key set, or a failed stage? Check the "
            "run; force the publish (--force-publish) or lower --min-entries-ratio if it is deliberate",
        }[outcome]
        raise CacheError(f"version {self.version} {why}; the live version is still {live}.")

    def abort(self) -> None:
        """Deletes this version's keys; refuses (CacheError) when it is live or the rollback target."""
        k = self.keys
        keys = [k.live, k.previous, k.data(self.version), k.meta(self.version)]
        with redis_errors("abort", self.version):
            removed = self._abort(keys=keys, args=[self.version])
        if removed == 0:
            raise CacheError(f"version {self.version} is live or the rollback target; it was not deleted.")


@contextmanager
def redis_errors(step: str, version: str):
    """A Redis out-of-memory or read-only error as a CacheError that names the cause and the fix."""
    import redis

    try:
        yield
    except redis.ResponseError as exc:  # inside a script Redis reports OOM / READONLY as a script error
        text = str(exc)
        if isinstance(exc, redis.OutOfMemoryError) or "OOM command not allowed" in text:
            raise CacheError(
                f"Redis ran out of memory during {step} of version {version} ({text}); the live version is "
                "unchanged. Give Redis more memory (maxmemory), or free some: `python -m jobs.cache gc` "
                "removes abandoned versions, a shorter --keep-previous-s frees the previous one sooner. Redis "
                "must hold the live, the previous and the new version at once."
            ) from None
        if isinstance(exc, redis.ReadOnlyError) or "READONLY" in text:
            raise CacheError(
                f"Redis refused the {step} of version {version}: it is a read-only replica ({text}). Point "
                "REDIS_URL at the primary."
            ) from None
        raise


def check_eviction_policy(client) -> str:
    """The server's maxmemory-policy; CacheError when it may evict keys without a TTL (the live version)."""
    import redis

    try:
        memory = client.info("memory")
    except redis.ResponseError as exc:  # e.g. an ACL user without INFO
        raise CacheError(
            f"could not read Redis's maxmemory-policy ({exc}): the publish checks that the live version cannot "
            "be evicted. Allow INFO for this user, or skip the check (--allow-evictable-redis) if the policy is "
            "noeviction."
        ) from None
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy in EVICTING_POLICIES and int(memory.get("maxmemory", 0) or 0) > 0:
        raise CacheError(
            f"Redis has maxmemory-policy {policy} with maxmemory {memory.get('maxmemory_human', '?')}: under "
            "memory pressure it would evict keys of the live version and readers would silently miss. Set "
            "maxmemory-policy to noeviction (or volatile-lru, which only evicts keys with a TTL), or allow it "
            "explicitly (--allow-evictable-redis)."
        )
    return policy


@dataclass(frozen=True)
class StagingVersion:
    """A version that is being written, or was abandoned by a killed publisher."""

    version: str
    status: str  # "writing", or "orphan" (a data hash whose meta is gone)
    created_ms: int | None
    updated_ms: int | None  # last chunk written
    fields: int  # fields in its hash so far
    ttl_s: int  # seconds until it expires by itself (-1: never)


def staging_versions(client, namespace: str = "explore") -> list[StagingVersion]:
    """Versions of the namespace that are not live, previous or retired: being written, or abandoned."""
    k = CacheKeys(namespace)
    protected = {live_version(client, namespace), _text(client.get(k.previous) or b"")}
    found: dict[str, StagingVersion] = {}
    for raw in client.scan_iter(match=k.prefix + "*", count=1000):
        key = _text(raw)
        version = key[len(k.prefix) :].removesuffix(":meta")
        if version in found or version in protected:
            continue
        meta = version_meta(client, namespace, version)
        status = meta.get("status") or "orphan"
        if status != "writing" and status != "orphan":
            continue
        data = k.data(version)
        found[version] = StagingVersion(
            version=version,
            status=status,
            created_ms=int(meta["created_ms"]) if "created_ms" in meta else None,
            updated_ms=int(meta["updated_ms"]) if "updated_ms" in meta else None,
            fields=int(client.hlen(data)),
            ttl_s=int(client.ttl(data if client.exists(data) else k.meta(version))),
        )
    return sorted(found.values(), key=lambda v: v.version)


def gc_staging(client, namespace: str = "explore", *, idle_s: float = 3600.0) -> list[str]:
    """Removes (UNLINK) versions being written whose last chunk is older than idle_s, and orphaned data
    hashes; never the live or previous version, nor one whose writer is still active. Returns the removed."""
    k = CacheKeys(namespace)
    script = client.register_script(_GC)
    removed = []
    for v in staging_versions(client, namespace):
        keys = [k.live, k.previous, k.data(v.version), k.meta(v.version)]
        if script(keys=keys, args=[v.version, int(idle_s * 1000)]) == 1:
            removed.append(v.version)
    return removed


def rollback(client, namespace: str = "explore", keep_current_s: int = 7 * 86_400) -> str:
    """Makes the previous version live again, atomically; the demoted one expires after keep_current_s.

    Returns the now-live version. Raises CacheError when there is no previous version or its data expired.
    """
    k = CacheKeys(namespace)
    reply = client.register_script(_ROLLBACK)(
        keys=[k.live, k.previous, k.versions], args=[k.prefix, keep_current_s]
    )
    outcome, first, second = (_text(x) for x in reply)
    if outcome == "ok":
        return first
    if outcome == "none":
        raise CacheError(
            f"namespace {namespace!r} has no previous version to roll back to; live is {first or None}."
        )
    raise CacheError(
        f"previous version {second} of namespace {namespace!r} has expired; the live version is still {first or None}."
    )

"""The Redis cache of best-of-n novel clusters per history key: versions, one atomic switch, reads.

A bulk job writes a whole new version beside the live one, then switches the live pointer in one Lua
script, so a reader sees the old set or the new set, never a mix. A ranking endpoint resolves the
pointer and fetches in one round trip.

Key layout (namespace `ns`, default "explore"). Every key carries the hash tag `{ns}`, so in Redis
Cluster all keys of a namespace live in one slot and the Lua scripts below may touch keys they build
from the version name:

    {ns}:live              string   the live version
    {ns}:previous          string   the version live before it (the rollback target)
    {ns}:versions          zset     version -> unix ms when it last went live (strictly increasing: two
                                    switches within one ms are 1 ms apart, so the order is the order of switches)
    {ns}:v:<version>       hash     field -> entry (see below)
    {ns}:v:<version>:meta  hash     status ("writing" | "live" | "retired"), created_ms, base_version (the
                                    version live at begin), updated_ms (last chunk), entries and live_ms
                                    (set by commit), plus what the publisher passes (k, slots,
                                    novelty_model, alignment_model, catalog_signature, ...)

Fields of a version's hash, for a history key (c1, ..., cK) of cluster ids, oldest first:

    "c1,c2,...,cK"         the full key
    "c2,...,cK" ... "cK"   back-off suffixes (the most recent clusters), for keys with no full entry
    "*"                    the global entry, when no suffix has one either

A reader tries the fields in that order and takes the first present one.

Entry value: UTF-8 text "cid:score;cid:score;..." best first, each score with 5 decimals, e.g.
"17:0.81234;5:0.70112" (readable in redis-cli, decoded with split).

Fencing: a commit is a compare-and-set on the version that was live at `begin`: when another publish
went live in between, the commit is refused (the newer version stays), so an older run that finishes
last never replaces a newer one. `begin` refuses a version whose k or catalog_signature differs from
the live one's, and `commit` one with fewer than min_entries_ratio (default 0.5) times the live
version's entries, unless forced. A commit whose reply was lost can be retried: it reports the same
result when that version is live. `begin` also refuses a Redis whose maxmemory-policy may evict live
keys (allkeys-*), unless allowed: eviction would silently empty the cache.

TTLs: a version being written expires staging_ttl_s (default 1 day) after its last chunk, so a
killed writer leaves nothing behind for long (`staging_versions` lists such versions, `gc_staging`
removes them once idle); the live version never expires; a version demoted by
a publish or a rollback expires after keep_previous_s / keep_current_s (default 7 days), and until
then `rollback` can restore it. `{ns}:versions` keeps one entry per publish (a few bytes each);
`list_versions` shows only versions whose data still exists.

    writer = CacheWriter(client)
    writer.begin({"k": 2, "novelty_model": "runs/novelty"})
    n = writer.write((key_field(key), encode_entry(clusters, scores)) for key, clusters, scores in rows)
    writer.commit(expected_entries=n)
    hit = CacheReader(client, k=2).lookup((3, 17), exclude=seen, top=4)
"""

from __future__ import annotations

import math
import numbers
import re
import secrets
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import count, islice

GLOBAL_FIELD = "*"
LEVELS = ("exact", "backoff", "global", "miss")
RESERVED_META = ("status", "created_ms", "entries", "live_ms", "base_version", "updated_ms")
EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class CacheError(RuntimeError):
    """A publish, commit or rollback was refused; the message names what failed and the live version."""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# ------------------------------------------------------------------------------------------
# Redis URLs: secrets never printed


def redact_url(url: str) -> str:
    """The URL with its secrets replaced by '***', for messages and logs: the password of the user-info
    part, a lone user-info value (redis://secret@host, a password in the user slot), and `password=` /
    `username=` query parameters. An unparseable URL gives a placeholder, never the text."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(str(url))
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return "<unparseable URL>"
    if "@" in str(url) and "@" not in parts.netloc:  # no scheme: "secret@host:6379" is all path
        return "***@" + str(url).rsplit("@", 1)[1]
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        query = [
            (k, "***" if k.lower() in ("password", "username") else v) for k, v in parse_qsl(parts.query)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def has_credentials(url: str) -> bool:
    return redact_url(url) != url


class SecretURL:
    """A Redis URL that holds a password: `str()` and `repr()` show it redacted, so it can travel as a Ray
    actor or task argument (and show up in an error or a log line) without leaking; `reveal()` gives the URL
    to connect with."""

    __slots__ = ("_url",)

    def __init__(self, url: str | SecretURL):
        self._url = url.reveal() if isinstance(url, SecretURL) else str(url)

    def reveal(self) -> str:
        return self._url

    def __str__(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"SecretURL({redact_url(self._url)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SecretURL) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __reduce__(self):
        return (SecretURL, (self._url,))


def reveal(url: str | SecretURL) -> str:
    """The plain URL of a str or SecretURL."""
    return url.reveal() if isinstance(url, SecretURL) else url


# ------------------------------------------------------------------------------------------
# Keys, fields and entries


@dataclass(frozen=True)
class CacheKeys:
    """The Redis key names of one namespace (see the module docstring)."""

    namespace: str = "explore"

    def __post_init__(self):
        if not _NAME.fullmatch(self.namespace):
            raise ValueError(
                f"namespace={self.namespace!r}: use letters, digits, '_', '.' or '-' (it goes inside a "
                "{hash tag} and key names)."
            )

    @property
    def live(self) -> str:
        return f"{{{self.namespace}}}:live"

    @property
    def previous(self) -> str:
        return f"{{{self.namespace}}}:previous"

    @property
    def versions(self) -> str:
        return f"{{{self.namespace}}}:versions"

    @property
    def prefix(self) -> str:
        """The data key of a version is prefix + version; its meta key adds ':meta'."""
        return f"{{{self.namespace}}}:v:"

    def data(self, version: str) -> str:
        return self.prefix + version

    def meta(self, version: str) -> str:
        return self.prefix + version + ":meta"


def key_field(key: Sequence[int]) -> str:
    """The hash field of a history key (or of a suffix of one): (3, 17) -> "3,17"."""
    return ",".join(str(int(c)) for c in key)


def lookup_fields(key: Sequence[int]) -> list[str]:
    """The fields a reader tries, in order: the full key, its suffixes from longest to shortest, "*"."""
    return [key_field(key[i:]) for i in range(len(key))] + [GLOBAL_FIELD]


def encode_entry(clusters: Sequence[int], scores: Sequence[float]) -> bytes:
    """b"17:0.81234;5:0.70112" for clusters (17, 5) with scores (0.812341, 0.70112), best first."""
    if len(clusters) != len(scores):
        raise ValueError(
            f"encode_entry: {len(clusters)} clusters {list(clusters)} but {len(scores)} scores {list(scores)}; "
            "give one score per cluster."
        )
    for c, s in zip(clusters, scores, strict=True):
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0:
            raise ValueError(f"encode_entry: cluster id {c!r} must be an int >= 0.")
        if not math.isfinite(s):
            raise ValueError(
                f"encode_entry: score {s!r} of cluster {c} is not finite; drop or fix the score."
            )
    return ";".join(f"{int(c)}:{s:.5f}" for c, s in zip(clusters, scores, strict=True)).encode()


def decode_entry(raw: bytes | str) -> tuple[list[int], list[float]]:
    """The (clusters, scores) of an encoded entry, best first."""
    text = _text(raw)
    if not text:
        return [], []
    try:
        pairs = [item.split(":") for item in text.split(";")]
        return [int(c) for c, _ in pairs], [float(s) for _, s in pairs]
    except ValueError as exc:
        raise ValueError(f"cache entry {text!r} is not 'cid:score;cid:score;...': {exc}") from exc


def new_version() -> str:
    """A version id sortable by time: "20250101T120000Z-3fa2c1" (UTC, then 6 random hex digits)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


# ------------------------------------------------------------------------------------------
# Publishing

# KEYS: data, meta.  ARGV[1]: TTL seconds, ARGV[2..]: field, value, field, value, ...
# Writes only into a version whose status is "writing", so a late writer (a retried Ray task) can never
# put a TTL on a committed version. Returns the status it found.
_WRITE_CHUNK = """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'writing' then return status end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'updated_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return status
"""

# KEYS: live, previous, versions, data, meta.  ARGV: version, expected entries, keep_previous_s, prefix,
# min entries ratio against the live version (0: no check), force ('1': skip the ratio check).
# The old version's keys are built from prefix: they carry the same {ns} hash tag, hence the same slot.
# Returns {'ok', old live or '', entries, now ms}, {'already', previous or '', entries, live ms} when this
# version is live already (a retried commit), or {reason, live or '', detail}; on a reason, nothing changed.
_COMMIT = """
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
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if last[2] and now <= tonumber(last[2]) then now = tonumber(last[2]) + 1 end  -- switches stay ordered
redis.call('HSET', KEYS[5], 'status', 'live', 'entries', n, 'live_ms', now)
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('SET', KEYS[1], ARGV[1])
if live ~= '' then
  redis.call('SET', KEYS[2], live)
  redis.call('HSET', ARGV[4] .. live .. ':meta', 'status', 'retired')
  redis.call('EXPIRE', ARGV[4] .. live, ARGV[3])
  redis.call('EXPIRE', ARGV[4] .. live .. ':meta', ARGV[3])
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
return {'ok', live, n, now}
"""

# KEYS: live, previous, data, meta.  ARGV: version.  Deletes the version unless it is live or previous.
# UNLINK: a large hash is freed in the background, not while readers wait.
_ABORT = """
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
return redis.call('UNLINK', KEYS[3], KEYS[4])
"""

# KEYS: live, previous, data, meta.  ARGV: version, idle ms.  Removes a version still being written whose
# last chunk is older than idle ms (or a data hash whose meta is gone), never the live or previous one.
# Returns 1 when removed, 0 when kept.
_GC = """
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[4], 'status')
if status and status ~= 'writing' then return 0 end
if status then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('HGET', KEYS[4], 'updated_ms') or redis.call('HGET', KEYS[4], 'created_ms') or '0')
  if now - last < tonumber(ARGV[2]) then return 0 end
end
redis.call('UNLINK', KEYS[3], KEYS[4])
return 1
"""

# KEYS: live, previous, versions.  ARGV: prefix, keep_current_s.  Keys built from prefix as in _COMMIT.
# Returns {'ok', restored, demoted or ''} or {reason, live or '', previous or ''}; on a reason, nothing changed.
_ROLLBACK = """
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
  redis.call('HSET', ARGV[1] .. live .. ':meta', 'status', 'retired')
  redis.call('EXPIRE', ARGV[1] .. live, ARGV[2])
  redis.call('EXPIRE', ARGV[1] .. live .. ':meta', ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if last[2] and now <= tonumber(last[2]) then now = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[3], now, prev)
return {'ok', prev, live}
"""


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


def live_version(client, namespace: str = "explore") -> str | None:
    raw = client.get(CacheKeys(namespace).live)
    return None if raw is None else _text(raw)


def list_versions(client, namespace: str = "explore") -> list[tuple[str, int]]:
    """(version, unix ms it last went live), newest first, for versions whose data still exists."""
    k = CacheKeys(namespace)
    ranked = [(_text(v), int(ms)) for v, ms in client.zrevrange(k.versions, 0, -1, withscores=True)]
    pipe = client.pipeline(transaction=False)
    for version, _ in ranked:
        pipe.exists(k.data(version))
    return [row for row, exists in zip(ranked, pipe.execute(), strict=True) if exists]


def version_meta(client, namespace: str, version: str) -> dict[str, str]:
    """The meta hash of a version ({} when it has none)."""
    return {_text(f): _text(v) for f, v in client.hgetall(CacheKeys(namespace).meta(version)).items()}


# ------------------------------------------------------------------------------------------
# Reading

# KEYS[1]: the live key.  ARGV[1]: prefix, ARGV[2..]: fields.  Returns {version, value, ...} or {} when no
# version is live. The data key is built here from the live version rather than declared: it carries the
# same {ns} hash tag as KEYS[1], hence the same Redis Cluster slot.
_LOOKUP = """
local version = redis.call('GET', KEYS[1])
if not version then return {} end
local values = redis.call('HMGET', ARGV[1] .. version, unpack(ARGV, 2))
table.insert(values, 1, version)
return values
"""


@dataclass(frozen=True)
class CacheHit:
    """Cached novel clusters for one history key, best first."""

    version: str | None  # the live version read; None when none is live
    clusters: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    level: str = "miss"  # exact | backoff | global | miss (see LEVELS)
    field: str | None = None  # the hash field the entry came from
    models: Mapping[str, str] = dataclass_field(
        default_factory=dict
    )  # the version's meta (read-only); {} on a miss


class CacheReader:
    """Looks up history keys in the live version: one round trip per call (plus one per new version).

    Args:
        client: a redis.Redis.
        namespace: the cache's key namespace.
        k: history key length K; a live version whose meta names another k is refused (CacheError).

    A Redis connection error propagates as redis.ConnectionError; the caller decides how to degrade.
    """

    def __init__(self, client, namespace: str = "explore", *, k: int):
        if k < 1:
            raise ValueError(f"k={k}: the history key length must be >= 1.")
        self.client = client
        self.keys = CacheKeys(namespace)
        self.k = k
        self._lookup = client.register_script(_LOOKUP)
        self._meta: tuple[str, Mapping[str, str]] | None = None  # (version, meta) of the last version read

    def lookup(
        self, history_key: Sequence[int], *, exclude: Iterable[int] = (), top: int | None = None
    ) -> CacheHit:
        """The first present entry of lookup_fields(history_key), without the key's and `exclude`'s clusters."""
        fields = self._fields(history_key)
        reply = self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return self._hit(history_key, fields, reply, exclude, self._check_top(top))

    def lookup_global(self, *, exclude: Iterable[int] = (), top: int | None = None) -> CacheHit:
        """The global entry alone (level "global" or "miss"): for members with fewer than K clusters."""
        fields = [GLOBAL_FIELD]
        reply = self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return self._hit((), fields, reply, exclude, self._check_top(top))

    def lookup_many(
        self,
        keys: Sequence[Sequence[int]],
        *,
        excludes: Sequence[Iterable[int]] | None = None,
        top: int | None = None,
    ) -> list[CacheHit]:
        """`lookup` for many keys in one pipelined round trip, in input order (excludes: one per key).

        Each hit comes from one version; hits of one call may come from two if a switch happens meanwhile.
        """
        excludes = [()] * len(keys) if excludes is None else list(excludes)
        if len(excludes) != len(keys):
            raise ValueError(f"excludes has {len(excludes)} items for {len(keys)} keys; give one per key.")
        top = self._check_top(top)
        fields = [self._fields(key) for key in keys]
        pipe = self.client.pipeline(transaction=False)
        for f in fields:
            self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *f], client=pipe)
        replies = pipe.execute()
        return [self._hit(*args, top) for args in zip(keys, fields, replies, excludes, strict=True)]

    def _fields(self, history_key: Sequence[int]) -> list[str]:
        key = tuple(history_key)
        if len(key) != self.k or any(
            isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in key
        ):
            raise ValueError(
                f"history_key={key!r}: give the member's last {self.k} cluster ids (ints >= 0), oldest first."
            )
        return lookup_fields(key)

    @staticmethod
    def _check_top(top: int | None) -> int | None:
        if top is not None and top < 1:
            raise ValueError(f"top={top}: give a number of clusters >= 1, or None for all.")
        return top

    def _hit(self, history_key, fields: list[str], reply: list, exclude: Iterable[int], top) -> CacheHit:
        if not reply:
            return CacheHit(version=None)
        version = _text(reply[0])
        found = next(((f, v) for f, v in zip(fields, reply[1:], strict=True) if v is not None), None)
        if found is None:
            return CacheHit(version=version)
        field_name, raw = found
        drop = set(history_key) | set(exclude)
        kept = [(c, s) for c, s in zip(*decode_entry(raw), strict=True) if c not in drop][:top]
        level = "global" if field_name == GLOBAL_FIELD else "exact" if field_name == fields[0] else "backoff"
        return CacheHit(
            version=version,
            clusters=tuple(c for c, _ in kept),
            scores=tuple(s for _, s in kept),
            level=level,
            field=field_name,
            models=self._version_meta(version),
        )

    def _version_meta(self, version: str) -> Mapping[str, str]:
        if self._meta is None or self._meta[0] != version:
            meta = version_meta(self.client, self.keys.namespace, version)
            if "k" in meta and int(meta["k"]) != self.k:
                raise CacheError(
                    f"live version {version} was built for k={meta['k']} but this reader has k={self.k}; "
                    "build the reader with the cache's k."
                )
            self._meta = (version, types.MappingProxyType(meta))
        return self._meta[1]

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

from explore.cache.layout import (
    GLOBAL_FIELD,
    LEVELS,
    RESERVED_META,
    CacheError,
    CacheKeys,
    decode_entry,
    encode_entry,
    key_field,
    list_versions,
    live_version,
    lookup_fields,
    new_version,
    version_meta,
)
from explore.cache.reader import AsyncCacheReader, CacheHit, CacheReader
from explore.cache.urls import SecretURL, has_credentials, redact_url, reveal
from explore.cache.writer import (
    CacheWriter,
    PublishResult,
    StagingVersion,
    check_eviction_policy,
    gc_staging,
    redis_errors,
    rollback,
    staging_versions,
)

__all__ = [
    "GLOBAL_FIELD", "LEVELS", "RESERVED_META", "AsyncCacheReader", "CacheError", "CacheHit", "CacheKeys", "CacheReader",
    "CacheWriter", "PublishResult", "SecretURL", "StagingVersion", "check_eviction_policy", "decode_entry",
    "encode_entry", "gc_staging", "has_credentials", "key_field", "list_versions", "live_version",
    "lookup_fields", "new_version", "redact_url", "redis_errors", "reveal", "rollback", "staging_versions",
    "version_meta",
]  # fmt: skip

"""Explicit pyarrow schemas of every table the system passes between its parts.

Each schema is defined here once; writers cast to it and readers validate against it
(catalog.io). Field metadata carries a one-line description, so `schema.field(name)`
documents itself in the parquet footer as well.
"""

from __future__ import annotations

import pyarrow as pa


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = False, *, added: bool = False) -> pa.Field:
    """A documented field. `added`: a column added to the schema after files were written without it;
    it is nullable, and readers fill it with nulls in those files (catalog.io.read_table)."""
    meta = {"doc": doc, **({"added": "true"} if added else {})}
    return pa.field(name, type_, nullable=nullable or added, metadata=meta)


def is_added(field: pa.Field) -> bool:
    """Whether files may lack this column (see `_f`)."""
    return bool(field.metadata) and field.metadata.get(b"added") == b"true"


ITEMS = pa.schema(
    [
        _f("item_id", pa.int64(), "stable item id (MovieLens movie id, or synthetic)"),
        _f("title", pa.string(), "display title"),
        _f("year", pa.int32(), "release year; 0 when unknown"),
        _f("genres", pa.list_(pa.string()), "genre names, catalog.movielens.GENRES vocabulary"),
        _f("cluster_id", pa.int32(), "the one interest cluster this item belongs to"),
        _f("n_ratings", pa.int32(), "ratings seen for the item in the source data"),
    ]
)

CLUSTERS = pa.schema(
    [
        _f("cluster_id", pa.int32(), "stable id, 0..M-1"),
        _f("name", pa.string(), "unique short name, lower-case words joined by '-'"),
        _f("keywords", pa.list_(pa.string()), "keywords an LLM reads: genres, era, titles"),
        _f("description", pa.string(), "one-line keyword description shown to LLMs"),
        _f("parent_id", pa.int32(), "level-1 group of the two-level hierarchy"),
        _f("parent_name", pa.string(), "name of the level-1 group"),
        _f("n_items", pa.int32(), "items in the cluster"),
    ]
)

MEMBERS = pa.schema(
    [
        _f("member_id", pa.int64(), "stable member id"),
        _f("age", pa.int32(), "age in years; 0 when unknown"),
        _f("gender", pa.string(), "as recorded by the source"),
        _f("occupation", pa.string(), "as recorded by the source"),
        _f("zip_code", pa.string(), "as recorded by the source"),
    ]
)

INTERACTIONS = pa.schema(
    [
        _f("member_id", pa.int64(), "who"),
        _f("item_id", pa.int64(), "what"),
        _f("rating", pa.float32(), "explicit rating 1..5"),
        _f("timestamp", pa.int64(), "unix seconds"),
    ]
)

HISTORIES = pa.schema(
    [
        _f("member_id", pa.int64(), "whose history"),
        _f("clusters", pa.list_(pa.int32()), "chronological clusters of positive items, repeats merged"),
        _f("timestamps", pa.list_(pa.int64()), "unix seconds of the first positive item of each run"),
        _f("n_positive", pa.int32(), "positive interactions behind the history"),
    ]
)

# One row per impression served; the same schema whether the simulator or production logs it.
FEEDBACK_LOG = pa.schema(
    [
        _f("request_id", pa.string(), "id of the ranking request that produced the impression"),
        _f("member_id", pa.int64(), "who saw it"),
        _f("timestamp", pa.int64(), "unix milliseconds of the impression"),
        _f("history_key", pa.list_(pa.int32()), "the member's last K clusters at request time"),
        _f("item_id", pa.int64(), "shown item"),
        _f("cluster_id", pa.int32(), "cluster of the shown item"),
        _f("source", pa.string(), "'explore' (novel cluster from the cache) or 'exploit'"),
        _f("position", pa.int32(), "0-based slot in the ranked list"),
        _f("content_type", pa.string(), "context group for dwell percentiles, e.g. 'movie'"),
        _f("click", pa.bool_(), "opened the item"),
        _f("like", pa.bool_(), "liked it"),
        _f("share", pa.bool_(), "shared it"),
        _f("skip", pa.bool_(), "skipped it explicitly"),
        _f("dwell_s", pa.float32(), "seconds spent on the item; 0 without a click"),
    ]
)

# The history keys a bulk run samples for (explore.keys): K cluster ids, and the member whose own key it is
# (null for a key shared by every member who has it).
KEYS = pa.schema(
    [
        _f("history_key", pa.list_(pa.int32()), "the K history clusters, oldest first"),
        _f("member_id", pa.int64(), "the member of a per-member key; null for a shared key", True),
    ]
)

# Rows of a user's key file that are not keys (wrong length, unknown cluster, null), kept with why.
KEY_QUARANTINE = pa.schema(
    [
        _f("history_key", pa.list_(pa.int64()), "the row's key as given (ids widened to int64)", True),
        _f("member_id", pa.int64(), "the row's member, if any", True),
        _f("reason", pa.string(), "why the row is not a key"),
    ]
)

# One row per item the ranking endpoint served (serving/), before any engagement: the FEEDBACK_LOG columns the
# server knows at request time, plus what produced the answer. Joined with engagement events by
# (request_id, item_id) it becomes FEEDBACK_LOG rows.
IMPRESSION_LOG = pa.schema(
    [
        _f("request_id", pa.string(), "id of the ranking request (returned to the client)"),
        _f("member_id", pa.int64(), "who the slate was for"),
        _f("timestamp", pa.int64(), "unix milliseconds when the slate was served"),
        _f(
            "history_key",
            pa.list_(pa.int32()),
            "the member's last K clusters at request time (fewer on a cold start)",
        ),
        _f("item_id", pa.int64(), "served item"),
        _f("cluster_id", pa.int32(), "cluster of the served item"),
        _f("source", pa.string(), "'explore' (a cached novel cluster) or 'exploit' (the member's own)"),
        _f("position", pa.int32(), "0-based slot in the served list"),
        _f("content_type", pa.string(), "the request's content type"),
        _f("score", pa.float32(), "the ranking score the item was placed by"),
        _f("explored", pa.bool_(), "the score was a Thompson sample (the request asked explore=true)"),
        _f("cache_level", pa.string(), "exact | backoff | global | miss | degraded"),
        _f("cache_version", pa.string(), "the Redis cache version read; null when none", True),
        _f("ranker_version", pa.string(), "content hash of the ranker checkpoint that scored the slate"),
        _f(
            "shuffled",
            pa.bool_(),
            "the slate was served in a pseudo-random order (replay evaluation traffic); null in older logs",
            added=True,
        ),
    ]
)

# One row per engagement event a client reported for a served item (POST /feedback on the endpoint).
# Joined with IMPRESSION_LOG by (request_id, item_id) it completes FEEDBACK_LOG rows (jobs.join_feedback).
ENGAGEMENT_EVENTS = pa.schema(
    [
        _f("request_id", pa.string(), "the ranking request that served the item (its response's request_id)"),
        _f("item_id", pa.int64(), "the served item the event is about"),
        _f("received_ms", pa.int64(), "unix milliseconds when the endpoint received the event"),
        _f("click", pa.bool_(), "opened the item"),
        _f("like", pa.bool_(), "liked it"),
        _f("share", pa.bool_(), "shared it"),
        _f("skip", pa.bool_(), "skipped it explicitly"),
        _f("dwell_s", pa.float32(), "seconds spent on the item; 0 without a click"),
    ]
)

# Engagement events that could not be joined with an impression (catalog.join), kept with why.
EVENT_QUARANTINE = pa.schema(
    [pa.field(f.name, f.type, nullable=True, metadata=f.metadata) for f in ENGAGEMENT_EVENTS]
    + [
        _f(
            "reason",
            pa.string(),
            "why the event was set aside: no impression | duplicate | late | duplicate impression",
        )
    ]
)

# One row per history key: what the novelty LLM proposed for it (explore.sampler, jobs.sample_novelty).
NOVELTY_CANDIDATES = pa.schema(
    [
        _f("history_key", pa.list_(pa.int32()), "the K history clusters the samples were drawn for"),
        _f("member_id", pa.int64(), "whose key, when keys are per member; null for shared keys", True),
        _f("candidates", pa.list_(pa.int32()), "distinct novel clusters sampled, most samples first"),
        _f("counts", pa.list_(pa.int32()), "samples that named each candidate"),
        _f(
            "logprobs", pa.list_(pa.float32()), "mean log-probability of the candidate's name under the model"
        ),
        _f("n_samples", pa.int32(), "samples drawn for the key"),
        _f("n_in_history", pa.int32(), "samples that named a cluster already in the key (dropped)"),
        _f("n_invalid", pa.int32(), "samples that named no catalog cluster (0 when constrained)"),
        _f("seed", pa.int64(), "the key's sampling seed; same seed, same model, same samples"),
        _f(
            "samples",
            pa.list_(pa.int32()),
            "every sample in draw order: its cluster id, -1 when it named none (best-of-n for a smaller n "
            "is the first n of them); null where not kept",
            added=True,
        ),
        _f(
            "sample_logprobs", pa.list_(pa.float32()), "each sample's log-probability, draw order", added=True
        ),
    ]
)

# One row per history key of a bulk run (jobs.best_of_n): the novelty samples, their alignment scores and
# the best-of-n clusters cached for the key; written for audit next to the Redis publish.
BEST_OF_N = pa.schema(
    list(NOVELTY_CANDIDATES)
    + [
        _f("scores", pa.list_(pa.float32()), "alignment model P(engage) of each candidate, same order"),
        _f("selected", pa.list_(pa.int32()), "the best-of-n clusters cached for the key, best first"),
        _f("selected_scores", pa.list_(pa.float32()), "their alignment scores"),
        _f("cached", pa.bool_(), "an entry was written for the key (false: no candidate passed min_score)"),
    ]
)

# One row per (history key, candidate cluster): feedback on that cluster aggregated over every member
# whose key it was (alignment.aggregate); the alignment model's pointwise training examples.
FEEDBACK_PAIRS = pa.schema(
    [
        _f("history_key", pa.list_(pa.int32()), "the K history clusters, oldest first"),
        _f("cluster_id", pa.int32(), "the candidate cluster that was shown"),
        _f("impressions", pa.int64(), "feedback events aggregated (impressions of the cluster to the key)"),
        _f("clicks", pa.int64(), "impressions that were clicked"),
        _f("likes", pa.int64(), "impressions that were liked"),
        _f("shares", pa.int64(), "impressions that were shared"),
        _f("skips", pa.int64(), "impressions that were skipped"),
        _f("dwell_clicks", pa.int64(), "clicks whose dwell reached dwell_click_s seconds (fixed)"),
        _f("engagement", pa.float64(), "weighted actions per impression, before normalisation"),
        _f("label", pa.float32(), "engagement normalised to [0, 1] and rounded to the label interval"),
    ]
)

# The pairwise (Bradley-Terry) view of FEEDBACK_PAIRS: two candidates of one key, the better one first.
FEEDBACK_PREFERENCES = pa.schema(
    [
        _f("history_key", pa.list_(pa.int32()), "the K history clusters"),
        _f("preferred", pa.int32(), "the candidate with the higher label"),
        _f("other", pa.int32(), "the candidate with the lower label"),
        _f("gap", pa.float32(), "label(preferred) - label(other), at least the configured minimum"),
    ]
)

# Feedback-log rows that could not be aggregated, with why (alignment.aggregate). Every log column is
# kept (nullable: a row may be missing any of them) so no data is lost.
FEEDBACK_QUARANTINE = pa.schema(
    [pa.field(f.name, f.type, nullable=True, metadata=f.metadata) for f in FEEDBACK_LOG]
    + [
        _f("reason", pa.string(), "why the row was set aside"),
        _f("part", pa.string(), "the log file the row came from"),
    ]
)

SOURCES = ("explore", "exploit")

TABLES: dict[str, pa.Schema] = {
    "items": ITEMS,
    "clusters": CLUSTERS,
    "members": MEMBERS,
    "interactions": INTERACTIONS,
    "histories": HISTORIES,
    "feedback_log": FEEDBACK_LOG,
    "impression_log": IMPRESSION_LOG,
    "engagement_events": ENGAGEMENT_EVENTS,
    "event_quarantine": EVENT_QUARANTINE,
    "novelty_candidates": NOVELTY_CANDIDATES,
    "best_of_n": BEST_OF_N,
    "feedback_pairs": FEEDBACK_PAIRS,
    "feedback_preferences": FEEDBACK_PREFERENCES,
    "feedback_quarantine": FEEDBACK_QUARANTINE,
    "keys": KEYS,
    "key_quarantine": KEY_QUARANTINE,
}

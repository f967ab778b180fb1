"""The novelty sampler as a Ray Data stage: a callable class that loads its engine once per actor.

    ds.map_batches(NoveltyStage, fn_constructor_kwargs={"model": DIR, "sampling": {...}},
                   batch_format="pyarrow", concurrency=1, num_cpus=0.5)

Input batches need `history_key` (list of K cluster ids) and `member_id` (nullable int). Output
batches are NOVELTY_CANDIDATES rows (catalog.schemas), one per input row, in input order, every one of
the n samples counted (unlike ray.data.llm, which keeps the first of n). `rag` and `retrieval`: as
NoveltySampler's (a model trained with --rag is sampled with rag=True, its own table or a fresher folder). The class runs without Ray
too: `NoveltyStage(model=DIR)(table)`.
"""

from __future__ import annotations

import pyarrow as pa

from explore.sampler import EngineConfig, NoveltySampler, SamplingConfig, candidates_table

REQUIRED_COLUMNS = ("history_key", "member_id")


class NoveltyStage:
    def __init__(
        self,
        model: str,
        sampling: dict | None = None,
        engine: dict | None = None,
        catalog_signature: str | None = None,
        rag: bool = False,
        retrieval: str | None = None,
    ):
        self.sampler = NoveltySampler(
            model, engine=EngineConfig(**(engine or {})), rag=rag, retrieval=retrieval
        )
        if catalog_signature is not None and catalog_signature != self.sampler.vocab.signature():
            raise ValueError(
                f"model={model!r} was trained on other clusters than the catalog's (signature "
                f"{self.sampler.vocab.signature()} vs {catalog_signature}). Retrain it on this catalog."
            )
        self.sampling = SamplingConfig(**(sampling or {}))

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in REQUIRED_COLUMNS if c not in batch.column_names]
        if missing:
            raise ValueError(
                f"NoveltyStage: batch lacks column(s) {missing}; present: {batch.column_names}. "
                "Feed rows of history_key (list<int32>) and member_id (int64, may be null)."
            )
        keys = batch["history_key"].to_pylist()
        members = batch["member_id"].to_pylist()
        return candidates_table(self.sampler.sample(keys, self.sampling, member_ids=members))


class CacheWriteStage:
    """Ray Data stage: writes each row's best-of-n entry into a cache version that is being published.

    The driver calls CacheWriter.begin before the pipeline runs and commit after it finishes; this stage
    only writes fields (CacheWriter.write), so any number of actors can share one version. Rows gain
    `cached` (true when an entry was written; a key with no selected cluster has none).

    url: a SecretURL (or a plain URL without a password): Ray may show an actor's arguments in errors.
    staging_ttl_s: the version's staging TTL, renewed with each chunk (the publisher's --staging-ttl-s).
    """

    def __init__(
        self,
        url,
        version: str,
        namespace: str = "explore",
        chunk: int = 1000,
        staging_ttl_s: int = 86_400,
    ):
        import redis

        from explore.cache import CacheWriter, reveal

        self.client = redis.Redis.from_url(reveal(url))
        self.writer = CacheWriter(
            self.client, namespace, version=version, chunk=chunk, staging_ttl_s=staging_ttl_s
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        from explore.cache import encode_entry, key_field

        rows = zip(
            *(batch[c].to_pylist() for c in ("history_key", "selected", "selected_scores")), strict=True
        )
        cached, entries = [], []
        for key, selected, scores in rows:
            cached.append(bool(selected))
            if selected:
                entries.append((key_field(key), encode_entry(selected, scores)))
        self.writer.write(entries)
        return batch.append_column("cached", pa.array(cached, pa.bool_()))

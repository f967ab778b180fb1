"""The main job and its parts: alignment scoring, the Redis publish, and the whole pipeline.

- alignment_scoring: AlignmentScorer (batches of whole keys, each key's history prefix run once and its KV
  cache shared by the key's candidates, no gradients) against a naive loop that scores one (key,
  candidate) pair per forward pass, on the same pairs and the same model; batched whole texts in detail.
- cache_publish: CacheWriter.write (Lua-checked HSET chunks of 1,000 fields) of real-sized entries,
  plus the atomic commit, against redis-benchmark -P 16 SET with values of the same size, same server.
- best_of_n_job: history keys per second of jobs.best_of_n over every observed key of MovieLens-100K (591,
  the demo's bulk run; Ray Data: vLLM sampling -> alignment scoring -> selection -> Redis), actor start-up
  included, with each stage's busy seconds, as it runs by default here (without a GPU: sampling and
  scoring fused in one actor stage, one single-threaded actor per core); against the same steps run one
  after another in this process (sampler, scorer, selection, writer; the models' imports already done,
  their loading timed). Goal: >= 0.9. The separate-stage
  layout (one actor per model, the GPU cluster layout) is run too, for its figures, and a plain loop: transformers
  `generate` + one alignment forward per candidate (timed on 32 keys, extrapolated to all; goal: the job >= 10x).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _alignment_model(catalog, vocab, out: Path, steps: int) -> None:
    """A tiny alignment model trained briefly on random labels: speed does not depend on what it learnt."""
    import pyarrow as pa

    from alignment.aggregate import preferences
    from alignment.train import AlignmentConfig, train_alignment
    from catalog.schemas import FEEDBACK_PAIRS
    from explore.keys import build_key_set

    rng = np.random.default_rng(0)
    keys = build_key_set(catalog.histories, catalog.history_k, vocab.size)["history_key"].to_pylist()[:200]
    rows = [
        {"history_key": k, "cluster_id": int(c), "impressions": 5, "clicks": 1, "likes": 0, "shares": 0, "skips": 0,
         "dwell_clicks": 0, "engagement": 0.2, "label": float(rng.integers(0, 11) / 10)}
        for k in keys for c in rng.choice(vocab.size, 5, replace=False)
    ]  # fmt: skip
    pairs = pa.Table.from_pylist(rows, schema=FEEDBACK_PAIRS)
    train_alignment(
        vocab, pairs, preferences(pairs, 0.2), out, AlignmentConfig(max_steps=steps), progress=False
    )


def speed_models(catalog, vocab, folder: Path, quick: bool) -> None:
    """folder/catalog, folder/novelty (tiny, 30 or 100 SFT steps) and folder/alignment (10 steps on random
    labels): the models the speed benchmarks run the main job with."""
    from explore.sft import SFTConfig, train_novelty

    catalog.save(folder / "catalog")
    train_novelty(
        vocab,
        catalog.histories,
        folder / "novelty",
        SFTConfig(max_steps=30 if quick else 100),
        progress=False,
    )
    _alignment_model(catalog, vocab, folder / "alignment", 10)


def _scoring(model_dir: Path, keys, quick: bool) -> dict:
    import torch

    from alignment.score import AlignmentScorer, score_logits

    scorer = AlignmentScorer(model_dir, device="cpu")
    rng = np.random.default_rng(1)
    pair_keys = [k for k in keys for _ in range(15)]  # about what the novelty LLM proposes per key
    cands = [
        int(c)
        for k in keys
        for c in rng.choice([c for c in range(scorer.vocab.size) if c not in k], 15, False)
    ]
    scorer.score(pair_keys, cands)  # warm-up: every batch shape once
    t0 = time.perf_counter()
    probs = scorer.score(pair_keys, cands)
    batched = len(cands) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    score_logits(
        scorer.model, scorer.encoder, pair_keys, cands, batch_size=scorer.batch_size, share_prefix=False
    )
    unshared = len(cands) / (time.perf_counter() - t0)
    n_naive = 150 if quick else 600
    model, enc = scorer.model, scorer.encoder
    t0 = time.perf_counter()
    naive = []
    with torch.inference_mode():
        for k, c in zip(pair_keys[:n_naive], cands[:n_naive], strict=True):
            ids = torch.tensor([enc(tuple(k), c)])
            naive.append(float(torch.sigmoid(model(ids, torch.ones_like(ids)))))
    naive_rate = n_naive / (time.perf_counter() - t0)
    assert np.allclose(naive, probs[:n_naive], atol=1e-4), "the naive loop and the batched scorer disagree"
    tokens = float(
        np.mean([len(enc(tuple(k), c)) for k, c in zip(pair_keys[:200], cands[:200], strict=True)])
    )
    print(
        f"  alignment scoring: {batched:,.0f} candidates/s (batched, each key's prefix once; {unshared:,.0f}/s "
        f"batched whole texts) vs {naive_rate:,.0f}/s one pair per forward ({len(cands)} pairs, {tokens:.0f} tokens "
        f"each, torch threads {torch.get_num_threads()})"
    )
    return {
        "name": "alignment_scoring", "value": batched, "unit": "candidates/s", "baseline": "one pair per forward pass",
        "baseline_value": naive_rate, "ratio": batched / naive_rate, "ratio_meaning": "speed-up over the baseline",
        "detail": {"pairs": len(cands), "mean_tokens": tokens, "batch_size": scorer.batch_size,
                   "batched_whole_texts_per_s": unshared},
    }  # fmt: skip


def _publish(quick: bool) -> dict:
    import redis

    from bench.tools import redis_benchmark
    from explore.cache import CacheWriter, encode_entry, key_field
    from jobs.services import RedisServer

    n = 50_000 if quick else 200_000
    rng = np.random.default_rng(2)
    entries = [
        (
            key_field((i // 1000, i % 1000)),
            encode_entry(rng.choice(2000, 4, False).tolist(), rng.random(4).tolist()),
        )
        for i in range(n)
    ]
    size = int(np.mean([len(v) for _, v in entries]))
    server = RedisServer.start()
    try:
        client = redis.Redis.from_url(server.url)
        writer = CacheWriter(client, "bench")
        writer.begin({"k": 2})
        t0 = time.perf_counter()
        written = writer.write(entries)
        result = writer.commit(written)
        rate = n / (time.perf_counter() - t0)
        assert result.entries == n
        version = client.info("server")["redis_version"]
        client.close()
        out = subprocess.run(
            [str(redis_benchmark()), "-h", "127.0.0.1", "-p", str(server.port), "-a", server.password, "-t", "set", "-n", str(n), "-P", "16",
             "-d", str(size), "-r", str(n), "--csv"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        server.stop()
    rb = next(float(line.split(",")[1].strip('"')) for line in out.splitlines() if line.startswith('"SET"'))
    print(f"  cache publish: {rate:,.0f} entries/s (write + commit) vs redis-benchmark -P 16 SET {rb:,.0f}/s")
    return {
        "name": "cache_publish", "value": rate, "unit": "entries/s", "baseline": "redis-benchmark -P 16 SET",
        "baseline_value": rb, "ratio": rate / rb, "ratio_meaning": "share of the server's raw SET rate",
        "detail": {"entries": n, "value_bytes": size, "server": f"redis {version}", "chunk": 1000},
    }  # fmt: skip


def _sequential(tmp: Path, vocab, keys, redis_url: str, n: int, slots: int) -> tuple[float, float]:
    """The baseline: the job's steps one after another in this process; returns (seconds in all, seconds
    after the models were loaded)."""
    import redis

    from alignment.score import AlignmentScorer
    from explore.best_of_n import SelectionConfig, best_of_n
    from explore.cache import CacheWriter, encode_entry, key_field
    from explore.sampler import NoveltySampler, SamplingConfig

    t0 = time.perf_counter()
    sampler = NoveltySampler(tmp / "novelty", vocab=vocab)
    scorer = AlignmentScorer(tmp / "alignment", device="cpu")
    loaded = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    writer = CacheWriter(client, "sequential")
    writer.begin({"k": 2})
    entries = []
    for res in sampler.sample(keys, SamplingConfig(n=n)):
        probs = scorer.score([res.history_key] * len(res.candidates), res.candidates).tolist()
        clusters, scores = best_of_n(res.candidates, res.counts, probs, SelectionConfig(slots))
        entries.append((key_field(res.history_key), encode_entry(clusters, scores)))
    writer.commit(writer.write(entries))
    done = time.perf_counter()
    sampler.close()
    client.close()
    return done - t0, done - loaded


def _plain_loop(tmp: Path, keys, n: int, slots: int, temperature: float = 1.5) -> tuple[float, float]:
    """The loop a user would write without this project: transformers `generate` with the names as a
    prefix trie (n samples per key), the samples decoded to clusters, each distinct novel candidate scored
    by one alignment forward pass, best-of-n. Returns (seconds loading the models, seconds over the keys)."""
    from collections import Counter

    import torch
    from transformers import AutoTokenizer

    from alignment.score import AlignmentScorer
    from bench.hf_baseline import ConstrainedGenerate
    from explore import read_model_info
    from explore.best_of_n import SelectionConfig, best_of_n
    from explore.tokenizer import encode_prompt

    t0 = time.perf_counter()
    info = read_model_info(tmp / "novelty")
    tok = AutoTokenizer.from_pretrained(tmp / "novelty")
    hf = ConstrainedGenerate(tmp / "novelty", tok, info.prompt_format, info.vocab)
    scorer = AlignmentScorer(tmp / "alignment", device="cpu")
    loaded = time.perf_counter()
    decoded = drawn = 0
    for key in keys:
        samples = hf.sample(encode_prompt(tok, info.prompt_format, info.vocab, key), n, temperature)
        decoded += sum(c is not None for c in samples)
        drawn += len(samples)
        counts = Counter(c for c in samples if c is not None and c not in key)
        cands = sorted(counts)
        with torch.inference_mode():
            probs = []
            for c in cands:
                ids = torch.tensor([scorer.encoder(tuple(key), c)])
                probs.append(float(torch.sigmoid(scorer.model(ids, torch.ones_like(ids)))))
        best_of_n(cands, [counts[c] for c in cands], probs, SelectionConfig(slots))
    seconds = time.perf_counter() - loaded
    # every constrained sample names a cluster: a decoding slip would make the loop look cheap
    assert decoded == drawn, f"the plain loop decoded {decoded} of {drawn} samples"
    return loaded - t0, seconds


def run(quick: bool = False) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.build import build_movielens_catalog
    from catalog.vocabulary import ClusterVocabulary
    from explore.keys import build_key_set
    from jobs.best_of_n import BestOfNConfig
    from jobs.best_of_n import run as run_job
    from jobs.services import ray_session, redis_service

    catalog = build_movielens_catalog()
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    all_keys = [tuple(k) for k in build_key_set(catalog.histories, 2, vocab.size)["history_key"].to_pylist()]
    keys = all_keys[:64] if quick else all_keys  # every observed key of MovieLens-100K: the demo's bulk run
    rows = [_publish(quick)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        speed_models(catalog, vocab, tmp, quick)
        rows.insert(0, _scoring(tmp / "alignment", keys[: 32 if quick else 128], quick))
        pq.write_table(pa.table({"history_key": [list(k) for k in keys]}), tmp / "keys.parquet")
        n, slots = 20, 4
        with ray_session(num_cpus=2, address="local"), redis_service() as r:
            cfg = BestOfNConfig(
                catalog=str(tmp / "catalog"), novelty=str(tmp / "novelty"), alignment=str(tmp / "alignment"),
                keys=str(tmp / "keys.parquet"), n=n, slots=slots,
                force=True,  # a throughput benchmark: its unevaluated models would fail the release gates
            )  # fmt: skip
            t0 = time.perf_counter()
            s = run_job(cfg, tmp / "job", r.url)
            job_s = time.perf_counter() - t0
            seq_s, seq_loop_s = _sequential(tmp, vocab, keys, r.url, n, slots)
            plain_keys = keys[: 8 if quick else 32]
            plain_load_s, plain_keys_s = _plain_loop(tmp, plain_keys, n, slots)
            # the plain loop over all the job's keys: its load, then its measured seconds per key
            plain_s = plain_load_s + plain_keys_s / len(plain_keys) * len(keys)
            separate = cfg.model_copy(update={"fuse_stages": "off", "namespace": "separate"})
            t0 = time.perf_counter()
            s_sep = run_job(separate, tmp / "job-separate", r.url)
            sep_s = time.perf_counter() - t0
    busy = s["stage_busy_s"]
    total_busy = sum(busy.values())
    share = {k: round(v / total_busy, 3) for k, v in busy.items()}
    print(
        f"  best-of-n job: {len(keys) / job_s:.2f} keys/s ({job_s:.1f}s, start-up included) vs {len(keys) / seq_s:.2f} "
        f"keys/s in one process ({seq_s:.1f}s); stage busy seconds {busy}, publish {s['publish_s']}s, Ray Data run {s['run_s']}s, save {s['save_s']}s; after start-up: the fused actors busy "
        f"{busy['sample'] + busy['score']:.1f}s in all ({(busy['sample'] + busy['score']) / s['novelty_actors']:.1f}s each) vs "
        f"the one-process loop {seq_loop_s:.1f}s; fused "
        f"{s['fused_stages']}, {s['novelty_actors']} sampling actor(s), {s['keys_per_batch']} keys per batch; a plain transformers generate + per-candidate scoring loop "
        f"{len(keys) / plain_s:.2f} keys/s ({plain_keys_s:.1f}s for {len(plain_keys)} keys, load {plain_load_s:.1f}s; "
        f"job {plain_s / job_s:.1f}x faster); separate stages {len(keys) / sep_s:.2f} keys/s ({sep_s:.1f}s, busy {s_sep['stage_busy_s']})"
    )
    rows.append(
        {"name": "best_of_n_job", "value": len(keys) / job_s, "unit": "keys/s",
         "baseline": "the same steps one after another in one process", "baseline_value": len(keys) / seq_s,
         "ratio": seq_s / job_s, "ratio_meaning": "speed over the one-process run (goal >= 0.9)",
         "detail": {"keys": len(keys), "n": n, "slots": slots, "stage_busy_s": busy, "stage_share": share,
                    "publish_s": s["publish_s"], "job_wall_s": job_s, "sequential_s": seq_s,
                    "fused_stages": s["fused_stages"], "separate_stages_wall_s": sep_s,
                    "novelty_actors": s["novelty_actors"], "keys_per_batch": s["keys_per_batch"],
                    "job_ray_data_run_s": s["run_s"],
                    "plain_loop_keys_timed": len(plain_keys), "plain_loop_load_s": plain_load_s,
                    "plain_loop_timed_s": plain_keys_s, "plain_loop_all_keys_s": plain_s,
                    "job_over_plain_loop": plain_s / job_s, "sequential_after_load_s": seq_loop_s,
                    "fused_busy_s": busy["sample"] + busy["score"], "job_save_s": s["save_s"], "job_pipeline_wall_s": s["wall_s"],
                    "separate_stages_busy_s": s_sep["stage_busy_s"]}}
    )  # fmt: skip
    return rows

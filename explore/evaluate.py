"""Evaluation of a novelty model on held-out members' transitions.

format validity   share of free (unconstrained) samples that name a catalog cluster exactly; the
                  papers' production gate is >= 90%. Measured at temperature 1 and at the bulk
                  sampling temperature, always untruncated (top_p 1, no top-k): the model's own
                  distribution, whatever truncation the bulk sampling uses.
recall@n          share of held-out transitions whose true next novel cluster is among the distinct
                  candidates of the key: n constrained samples with the default decoding, the model's
                  top-n names with `top`, n names drawn without replacement with `distinct`
                  (explore.sampler.DECODINGS).
novelty           share of constrained samples naming a cluster outside the key.
baselines         the same number of distinct candidates per key taken from (a) the most frequent
                  training targets of the key, then overall popularity, (b) uniformly at random, and
                  (c) with retrieval augmentation, the retrieval table the prompts read (the key's most
                  frequent next clusters, then its suffixes', then overall): does the model add anything
                  to the list it is shown?
exact (opt-in)    the model's own probability of every cluster name outside the key (prompt + name + end,
                  vLLM's prompt log-probabilities, no sampling): recall of its top-m names at the same m as
                  the sampled candidates and at m = n, beside the frequency table's top-m. It separates
                  what the model knows from what n samples with replacement at temperature T recover of it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from explore.examples import NoveltyExamples
from explore.sampler import NoveltySampler, SamplingConfig


def _frequency_ranking(train: NoveltyExamples, n_clusters: int):
    per_key: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for key, target in zip(train.keys, train.targets, strict=True):
        per_key[key][target] += 1
        overall[target] += 1
    popular = [c for c, _ in overall.most_common()] + [c for c in range(n_clusters) if c not in overall]

    def top(key: tuple[int, ...], m: int) -> list[int]:
        out = [c for c, _ in per_key[key].most_common() if c not in key][:m]
        for c in popular:
            if len(out) >= m:
                break
            if c not in key and c not in out:
                out.append(c)
        return out

    return top


def exact_name_logprobs(sampler: NoveltySampler, keys) -> dict[tuple, dict[int, float]]:
    """key -> {cluster: log P(its name and the end token | the key's prompt)} for every cluster outside the
    key (NoveltySampler.name_logprobs, through the sampler's vLLM engine): the model's exact distribution
    over names, not renormalised, no temperature; the prompts are the sampler's own (retrieved clusters
    included for a RAG model)."""
    keys = [tuple(k) for k in keys]
    return dict(zip(keys, sampler.name_logprobs(keys), strict=True))


def evaluate_novelty(
    sampler: NoveltySampler,
    evals: NoveltyExamples,
    train: NoveltyExamples,
    sampling: SamplingConfig,
    *,
    max_examples: int = 1000,
    free_samples: int = 4,
    exact: bool = False,
) -> dict:
    """Validity, recall@n, novelty and baselines on (at most max_examples) held-out transitions; `exact`
    adds the recall of the model's own top-m names (exact_name_logprobs) beside the table's."""
    rng = np.random.default_rng(sampling.seed)
    if len(evals) > max_examples:
        evals = evals.subset(sorted(rng.choice(len(evals), max_examples, replace=False)))
    keys = sorted(set(evals.keys))
    t0 = time.perf_counter()
    constrained = {r.history_key: r for r in sampler.sample(keys, sampling)}
    sample_s = time.perf_counter() - t0
    validity = {}
    for temperature in sorted({1.0, sampling.temperature}):
        free = sampler.sample(
            keys,
            replace(
                sampling,
                n=free_samples,
                temperature=temperature,
                constrained=False,
                top_p=1.0,
                top_k=0,
                decoding="sample",
            ),
        )
        drawn = sum(r.n_samples for r in free)
        validity[f"t={temperature:g}"] = round(1 - sum(r.n_invalid for r in free) / drawn, 4)

    top = _frequency_ranking(train, sampler.vocab.size)
    table = sampler.retrieval
    hits = base_hits = table_hits = 0
    random_recall = 0.0
    distinct = []
    for key, target in zip(evals.keys, evals.targets, strict=True):
        cands = constrained[key].candidates
        m = len(cands)
        distinct.append(m)
        hits += target in cands
        base_hits += target in top(key, m)
        if table is not None:
            table_hits += target in table.lookup(key, m)
        random_recall += m / (sampler.vocab.size - len(set(key)))
    n_samples = sum(r.n_samples for r in constrained.values())
    n = len(evals)
    exact_part = {}
    if exact:
        logp = exact_name_logprobs(sampler, keys)
        ranked = {k: sorted(v, key=lambda c: (-v[c], c)) for k, v in logp.items()}
        hits_m = hits_n = table_n = 0
        for key, target, m in zip(evals.keys, evals.targets, distinct, strict=True):
            hits_m += target in ranked[key][:m]
            hits_n += target in ranked[key][: sampling.n]
            table_n += target in top(key, sampling.n)
        exact_part = {
            "exact": {
                "recall_top_m": round(hits_m / n, 4),  # m: each key's distinct sampled candidates
                "recall_frequency_baseline_top_m": round(base_hits / n, 4),
                "n": sampling.n,
                "recall_top_n": round(hits_n / n, 4),
                "recall_frequency_baseline_top_n": round(table_n / n, 4),
            }
        }
    rag = {} if table is None else {
        "recall_retrieval_baseline": round(table_hits / n, 4),
        "retrieval": {"version": table.version, "top": sampler.format.retrieved},
    }  # fmt: skip
    return {
        "examples": n,
        "keys": len(keys),
        "n": sampling.n,
        "temperature": sampling.temperature,
        "decoding": sampling.decoding,
        **({"top_k": sampling.top_k} if sampling.top_k else {}),
        **({"top_p": sampling.top_p} if sampling.top_p < 1 else {}),
        "validity_free": validity,
        "validity_constrained": round(1 - sum(r.n_invalid for r in constrained.values()) / n_samples, 4),
        "recall_at_n": round(hits / n, 4),
        "recall_frequency_baseline": round(base_hits / n, 4),
        "recall_random_baseline": round(random_recall / n, 4),
        "novelty": round(1 - sum(r.n_in_history for r in constrained.values()) / n_samples, 4),
        "mean_distinct_candidates": round(float(np.mean(distinct)), 2),
        "samples_per_s": round(n_samples / sample_s, 1),
        **rag,
        **exact_part,
    }

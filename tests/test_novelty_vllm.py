"""The novelty LLM end to end on a tiny model: SFT, real vLLM sampling (one engine), the Ray Data job."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.io import read_table
from catalog.schemas import NOVELTY_CANDIDATES
from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig, build_examples
from explore.sampler import NoveltySampler, SamplingConfig
from explore.sft import SFTConfig, train_novelty
from lm.presets import TinyLMConfig

pytestmark = pytest.mark.slow
EXAMPLES = ExampleConfig(k=2, max_per_key=16, eval_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def trained(ml_catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("novelty")
    ml_catalog.save(root / "catalog")
    vocab = ClusterVocabulary.from_clusters(ml_catalog.clusters)
    config = SFTConfig(
        max_steps=40, batch_size=24, max_eval_examples=128, tiny=TinyLMConfig(num_hidden_layers=2)
    )
    report = train_novelty(vocab, ml_catalog.histories, root / "model", config, EXAMPLES, progress=False)
    return {
        "root": root,
        "model": root / "model",
        "catalog": root / "catalog",
        "report": report,
        "vocab": vocab,
    }


@pytest.fixture(scope="module")
def sampler(trained):
    s = NoveltySampler(trained["model"], vocab=trained["vocab"])
    yield s
    s.close()


@pytest.fixture(scope="module")
def keys(ml_catalog):
    from explore.keys import build_key_set

    table = build_key_set(ml_catalog.histories, 2, ml_catalog.n_clusters, "observed")
    return [tuple(k) for k in table["history_key"].to_pylist()[:: max(1, table.num_rows // 12)][:12]]


def test_sft_lowers_heldout_loss(trained):
    r = trained["report"]
    assert r["steps"] == 40 and r["method"] == "full"
    assert r["heldout_loss_after"] < 0.5 * r["heldout_loss_before"], r
    assert (trained["model"] / "model.safetensors").is_file() and (
        trained["model"] / "tokenizer.json"
    ).is_file()


def test_n_samples_per_key_all_valid_none_in_history(sampler, keys):
    results = sampler.sample(keys, SamplingConfig(n=15, temperature=1.5, seed=3))
    assert [r.history_key for r in results] == keys
    for r in results:
        assert r.n_samples == 15 and r.n_invalid == 0
        assert sum(r.counts) + r.n_in_history == 15  # every sample accounted for
        assert len(set(r.candidates)) == len(r.candidates)
        assert all(0 <= c < sampler.vocab.size and c not in r.history_key for c in r.candidates)
        assert r.counts == sorted(r.counts, reverse=True)
        assert all(lp < 0 for lp in r.logprobs)
        # the draw order is kept: the candidates are the tally of the samples, and a prefix is a smaller draw
        assert len(r.samples) == 15 and r.first(15) == r
        assert set(r.first(5).candidates) == {c for c in r.samples[:5] if c not in r.history_key}
    assert sum(len(r.candidates) for r in results) > len(results)  # high temperature: more than one each


def test_same_seed_same_samples_whatever_the_batch(sampler, keys):
    cfg = SamplingConfig(n=10, seed=11)
    a = sampler.sample(keys, cfg)
    b = sampler.sample(keys[::-1], cfg)[::-1]
    assert [(r.candidates, r.counts) for r in a] == [(r.candidates, r.counts) for r in b]
    c = sampler.sample(keys, replace(cfg, seed=12))
    assert [(r.candidates, r.counts) for r in a] != [(r.candidates, r.counts) for r in c]


def test_free_generation_is_counted_not_trusted(sampler, keys):
    results = sampler.sample(keys[:4], SamplingConfig(n=8, constrained=False, temperature=1.0))
    for r in results:
        assert r.n_invalid + r.n_in_history + sum(r.counts) == 8


def test_bad_keys_and_other_catalogs_are_refused(sampler, trained):
    with pytest.raises(ValueError, match=r"keys\[1\]=\[0, 4242\]: unknown cluster"):
        sampler.sample([(0, 1), (0, 4242)])
    with pytest.raises(ValueError, match=r"keys\[0\]=\[0\]: has 1 clusters"):
        sampler.sample([(0,)])
    v = trained["vocab"]
    other = ClusterVocabulary(("renamed", *v.names[1:]), v.descriptions)
    with pytest.raises(ValueError, match="differ from the catalog"):
        NoveltySampler(trained["model"], vocab=other)


def test_stage_checks_columns_and_writes_the_schema(sampler, keys):
    from explore.stage import NoveltyStage

    stage = NoveltyStage.__new__(NoveltyStage)  # reuse the module's engine
    stage.sampler, stage.sampling = sampler, SamplingConfig(n=6)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['member_id'\]; present: \['history_key'\]"):
        stage(pa.table({"history_key": [list(keys[0])]}))
    out = stage(pa.table({"history_key": [list(k) for k in keys[:3]], "member_id": [7, None, 9]}))
    assert out.schema == NOVELTY_CANDIDATES and out["member_id"].to_pylist() == [7, None, 9]
    assert out["n_samples"].to_pylist() == [6, 6, 6]


def test_evaluation_reports_validity_recall_novelty(sampler, ml_catalog):
    from explore.evaluate import evaluate_novelty

    train, evals, _ = build_examples(ml_catalog.histories, EXAMPLES, sampler.vocab.size)
    ev = evaluate_novelty(sampler, evals, train, SamplingConfig(n=8), max_examples=30, free_samples=2)
    assert ev["examples"] == 30 and ev["validity_constrained"] == 1.0
    assert 0 <= ev["validity_free"]["t=1"] <= 1 and 0 <= ev["recall_at_n"] <= 1
    assert ev["recall_random_baseline"] < ev["recall_frequency_baseline"]
    assert ev["novelty"] > 0.5  # trained only on targets outside the key


def test_exact_name_probabilities_rank_every_cluster_outside_the_key(sampler, ml_catalog, keys):
    """The opt-in exact ranking: a log-probability for every cluster outside the key from vLLM's prompt
    log-probabilities, equal to transformers' forward of the same tokens, a distribution over names (sums to
    at most 1), and a top-m of every cluster that recalls every target."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from explore.evaluate import evaluate_novelty, exact_name_logprobs
    from explore.tokenizer import answer_token_ids

    logp = exact_name_logprobs(sampler, keys[:3])
    for key in keys[:3]:
        assert set(logp[key]) == set(range(sampler.vocab.size)) - set(key)
        assert 0 < sum(math.exp(v) for v in logp[key].values()) <= 1 + 1e-5  # names end in eos: disjoint
    key, cluster = keys[0], next(iter(logp[keys[0]]))
    model = AutoModelForCausalLM.from_pretrained(sampler.model_dir).eval()
    prompt = sampler.prompt_ids(key)
    answer = answer_token_ids(sampler.tokenizer, sampler.format, sampler.vocab.names[cluster])
    with torch.inference_mode():
        lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0], -1)
    alone = sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))
    assert logp[key][cluster] == pytest.approx(alone, abs=1e-4)

    train, evals, _ = build_examples(ml_catalog.histories, EXAMPLES, sampler.vocab.size)
    every = sampler.vocab.size  # n = every cluster: the exact top-n holds every target
    ev = evaluate_novelty(
        sampler, evals, train, SamplingConfig(n=every), max_examples=12, free_samples=1, exact=True
    )
    exact = ev["exact"]
    assert (
        exact["n"] == every
        and exact["recall_top_n"] == 1.0
        and exact["recall_frequency_baseline_top_n"] == 1.0
    )
    assert (
        0 < exact["recall_top_m"] <= 1
        and exact["recall_frequency_baseline_top_m"] == ev["recall_frequency_baseline"]
    )


def test_name_probabilities_read_from_the_prefix_cache_equal_a_fresh_forward(sampler, ml_catalog):
    """name_logprobs reads each key's prompt from vLLM's prefix cache; a request whose cached blocks reach into
    its answer is re-run without the cache. Asking twice for a key whose answers cross a cache block makes
    the second call hit that case: same values, every one equal to transformers' forward of the tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from explore.keys import build_key_set

    block = sampler.engine.block_size
    longest = max(len(a) for a in sampler._answers)
    observed = [tuple(k) for k in build_key_set(ml_catalog.histories, 2, ml_catalog.n_clusters, "observed")
                ["history_key"].to_pylist()]  # fmt: skip
    key = next(k for k in observed if len(sampler.prompt_ids(k)) % block + longest > block)
    first = sampler.name_logprobs([key])[0]
    before = sampler.answer_requests_recomputed
    again = sampler.name_logprobs([key])[0]
    assert sampler.answer_requests_recomputed > before  # the fallback ran
    assert again == pytest.approx(first, abs=1e-5)
    model = AutoModelForCausalLM.from_pretrained(sampler.model_dir).eval()
    prompt = sampler.prompt_ids(key)
    clusters = sorted(first)
    with torch.inference_mode():
        for c in clusters:
            answer = sampler._answers[c]
            lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0], -1)
            alone = sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))
            assert again[c] == pytest.approx(alone, abs=1e-3), c


def test_top_decoding_proposes_the_models_most_likely_names(sampler, keys):
    """decoding="top": each key's n candidates are its n most likely names outside the key by the exact
    probabilities, once each, whatever the batching; first(m) is the top-m; n beyond the names gives all."""
    logp = sampler.name_logprobs(keys[:4])
    top = sampler.sample(keys[:4], SamplingConfig(n=5, decoding="top"))
    for key, lp, res in zip(keys[:4], logp, top, strict=True):
        expected = sorted(lp, key=lambda c: (-lp[c], c))[:5]
        assert res.candidates == expected and res.samples == expected and res.counts == [1] * 5
        assert res.logprobs == pytest.approx([lp[c] for c in expected], abs=1e-4)
        assert (res.n_samples, res.n_in_history, res.n_invalid) == (5, 0, 0) and not set(expected) & set(key)
        assert res.first(3).candidates == expected[:3]
    assert sampler.sample([keys[2]], SamplingConfig(n=5, decoding="top"))[0].candidates == top[2].candidates
    every = sampler.sample(keys[:2], SamplingConfig(n=sampler.vocab.size, decoding="top"))
    for key, res in zip(keys[:2], every, strict=True):
        assert sorted(res.candidates) == sorted(set(range(sampler.vocab.size)) - set(key))


def test_distinct_decoding_draws_different_names_with_the_keys_seed(sampler, keys):
    cfg = SamplingConfig(n=6, decoding="distinct", temperature=1.0, seed=1)
    drawn = sampler.sample(keys[:6], cfg)
    for key, res in zip(keys[:6], drawn, strict=True):
        assert len(set(res.samples)) == 6 and not set(res.samples) & set(key) and res.counts == [1] * 6
    assert [r.samples for r in sampler.sample(keys[3:6], cfg)] == [r.samples for r in drawn[3:6]]
    other = sampler.sample(keys[:6], replace(cfg, seed=2))
    assert [r.samples for r in other] != [r.samples for r in drawn]
    # at T = 1 the draw order follows the probabilities only loosely; at T = 0.01 it is the top order, up to
    # names within about 0.1 nats of each other (the Gumbel noise times T)
    assert any(r.sample_logprobs != sorted(r.sample_logprobs, reverse=True) for r in drawn)
    for r in sampler.sample(keys[:6], replace(cfg, temperature=0.01)):
        assert all(a >= b - 0.15 for a, b in zip(r.sample_logprobs, r.sample_logprobs[1:], strict=False))


def test_evaluation_of_the_top_decoding_is_all_novel_and_recorded(sampler, ml_catalog):
    from explore.evaluate import evaluate_novelty

    train, evals, _ = build_examples(ml_catalog.histories, EXAMPLES, sampler.vocab.size)
    ev = evaluate_novelty(
        sampler, evals, train, SamplingConfig(n=8, decoding="top"), max_examples=30, free_samples=1
    )
    assert ev["decoding"] == "top" and ev["novelty"] == 1.0 and ev["mean_distinct_candidates"] == 8
    assert 0 < ev["recall_at_n"] <= 1 and "t=1" in ev["validity_free"]  # free generation still sampled


def test_a_trained_model_is_re_evaluated_at_another_decoding_without_training(trained, tmp_path):
    """`python -m jobs.train_novelty --evaluate-only`: the model's own held-out split, the new evaluation
    recorded (what the release gates read), the one it replaces kept; the weights untouched. Run as the
    command, in its own process: a second vLLM engine in this one would tear down the module engine's
    process-wide state when closed."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from explore.model_info import read_model_info
    from jobs.train_novelty import NoveltyTrainFields, train

    model = shutil.copytree(trained["model"], tmp_path / "model")
    info = read_model_info(model)
    info.with_report({**info.report, "evaluation": {"decoding": "sample", "recall_at_n": 0.4}}).write(model)
    weights = (model / "model.safetensors").read_bytes()
    args = ["--catalog", str(trained["catalog"]), "--out", str(model), "--evaluate-only", "--eval-decoding", "top",
            "--eval-n", "5", "--eval-examples", "20", "--seed", "99"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "jobs.train_novelty", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "re-evaluated" in proc.stdout
        and "recall@5 of the next novel cluster (the model's top names)" in proc.stdout
    )
    saved = json.loads((model / "novelty.json").read_text())["report"]
    ev = saved["evaluation"]
    assert ev["decoding"] == "top" and ev["novelty"] == 1.0 and ev["mean_distinct_candidates"] == 5
    assert saved["earlier_evaluations"] == [{"decoding": "sample", "recall_at_n": 0.4}]
    assert (
        saved["steps"] == trained["report"]["steps"] and (model / "model.safetensors").read_bytes() == weights
    )
    cfg = NoveltyTrainFields(catalog=str(trained["catalog"]), evaluate_only=True, eval_decoding="top")
    with pytest.raises(ValueError, match="--evaluate-only evaluates, which --no-evaluate skips"):
        train(cfg.model_copy(update={"evaluate": False}), model)
    with pytest.raises(ValueError, match="--eval-top-k 3 truncates sampled tokens"):
        train(cfg.model_copy(update={"eval_top_k": 3}), model)
    # a model whose split was built with a field this version does not know: named, nothing evaluated
    info = read_model_info(model)
    info.example_config["min_gap"] = 2
    info.write(model)
    with pytest.raises(ValueError, match=r"example_config fields \['min_gap'\] that this version"):
        train(cfg, model)
    assert json.loads((model / "novelty.json").read_text())["report"]["evaluation"] == ev


def test_ray_data_job_keeps_every_sample_and_quarantines_bad_keys(
    ray_local, trained, sampler, keys, tmp_path
):
    from jobs.sample_novelty import SampleNoveltyConfig, sample

    key_file = tmp_path / "keys.parquet"
    rows = [list(k) for k in keys] + [[0], [0, 999]]
    pq.write_table(pa.table({"history_key": rows, "member_id": list(range(len(rows)))}), key_file)
    cfg = SampleNoveltyConfig(
        catalog=str(trained["catalog"]), model=str(trained["model"]), keys=str(key_file), n=7, batch_size=5,
        kv_cache_mib=64,
    )  # fmt: skip
    s = sample(cfg, tmp_path / "out")
    assert s["keys"] == len(keys) and s["quarantined_keys"] == 2 and s["samples"] == 7 * len(keys)
    assert s["valid_share"] == 1.0
    table = read_table(tmp_path / "out" / "candidates", NOVELTY_CANDIDATES)
    assert sorted(table["member_id"].to_pylist()) == list(range(len(keys)))
    assert set(table["n_samples"].to_pylist()) == {7}
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 2
    # a rerun into the same folder replaces the candidates and the quarantine, never appends to them; its
    # decoding reaches the actors: their draws are the in-process sampler's at the same settings
    rerun = {"keys": "observed", "limit": 3, "decoding": "distinct", "temperature": 0.7}
    s2 = sample(cfg.model_copy(update=rerun), tmp_path / "out")
    assert s2["keys"] == 3 and s2["decoding"] == "distinct"
    table = read_table(tmp_path / "out" / "candidates", NOVELTY_CANDIDATES)
    assert table.num_rows == 3
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 0
    here = sampler.sample([tuple(k) for k in table["history_key"].to_pylist()],
                          SamplingConfig(n=7, decoding="distinct", temperature=0.7))  # fmt: skip
    assert table["samples"].to_pylist() == [r.samples for r in here]

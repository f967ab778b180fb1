"""Retrieval-augmented novelty LLM end to end on a tiny model: SFT with --rag, the table saved with the model,
real vLLM sampling with its prompts (one engine), a fresher table without retraining, refusals, the Ray job."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig, build_examples
from explore.model_info import read_model_info
from explore.prompts import PromptFormat
from explore.retrieval import RetrievalTable
from explore.sampler import NoveltySampler, SamplingConfig
from explore.sft import SFTConfig, train_novelty
from lm.presets import TinyLMConfig

pytestmark = pytest.mark.slow
EXAMPLES = ExampleConfig(k=2, max_per_key=16, eval_fraction=0.1, seed=0)
TOP = 4


@pytest.fixture(scope="module")
def trained(ml_catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("novelty-rag")
    ml_catalog.save(root / "catalog")
    vocab = ClusterVocabulary.from_clusters(ml_catalog.clusters)
    config = SFTConfig(
        max_steps=40,
        batch_size=24,
        max_eval_examples=128,
        tiny=TinyLMConfig(num_hidden_layers=2),
        rag_top=TOP,
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
    s = NoveltySampler(trained["model"], vocab=trained["vocab"], rag=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def keys(ml_catalog):
    from explore.keys import build_key_set

    table = build_key_set(ml_catalog.histories, 2, ml_catalog.n_clusters, "observed")
    return [tuple(k) for k in table["history_key"].to_pylist()[:: max(1, table.num_rows // 10)][:10]]


def test_rag_training_saves_its_table_beside_the_weights_and_records_it(trained):
    model, report = trained["model"], trained["report"]
    info = read_model_info(model)
    table = RetrievalTable.read(model)
    assert info.rag and info.prompt_format == PromptFormat("plain", 2, TOP)
    assert info.retrieval["version"] == table.version == report["retrieval"]["version"]
    assert (
        info.retrieval["top"] == TOP
        and info.retrieval["excluded_members"] == report["examples"]["eval_members"]
    )
    assert report["heldout_loss_after"] < 0.5 * report["heldout_loss_before"], report
    assert not [p for p in model.iterdir() if p.suffix in (".pkl", ".pickle", ".pt", ".bin")]
    saved = json.loads((model / "novelty.json").read_text())
    assert saved["prompt_format"] == {"style": "plain", "k": 2, "retrieved": TOP}


def test_rag_prompts_carry_the_tables_clusters_and_samples_stay_valid_and_novel(sampler, keys):
    key = keys[0]
    retrieved = sampler.retrieved(key)
    assert len(retrieved) == TOP and not set(retrieved) & set(key)
    text = sampler.tokenizer.decode(sampler.prompt_ids(key))
    assert "recent: " + " | ".join(sampler.vocab.names[c] for c in retrieved) in text
    out = sampler.sample(keys, SamplingConfig(n=8, temperature=1.5, seed=3))
    assert [r.history_key for r in out] == keys
    for r in out:
        assert r.n_samples == 8 and r.n_invalid == 0 and not set(r.candidates) & set(r.history_key)
    again = sampler.sample(keys[:3], SamplingConfig(n=8, temperature=1.5, seed=3))
    assert [r.samples for r in again] == [r.samples for r in out[:3]]  # same seed, same samples


def test_top_k_truncates_the_draw_per_token(sampler, keys):
    wide = sampler.sample(keys, SamplingConfig(n=16, temperature=2.0, seed=1))
    narrow = sampler.sample(keys, SamplingConfig(n=16, temperature=2.0, top_k=1, seed=1))
    assert all(
        len(r.candidates) <= 1 and r.n_invalid == 0 for r in narrow
    )  # top-1 under the constraint: greedy
    assert sum(len(r.candidates) for r in wide) > sum(len(r.candidates) for r in narrow)


def test_evaluation_reports_the_retrieval_tables_own_recall(sampler, ml_catalog):
    from explore.evaluate import evaluate_novelty

    train, evals, _ = build_examples(ml_catalog.histories, EXAMPLES, sampler.vocab.size)
    ev = evaluate_novelty(
        sampler, evals, train, SamplingConfig(n=8, top_k=5), max_examples=30, free_samples=2
    )
    assert ev["retrieval"] == {"version": sampler.retrieval.version, "top": TOP} and ev["top_k"] == 5
    assert 0 < ev["recall_retrieval_baseline"] <= 1 and ev["validity_constrained"] == 1.0
    assert 0 <= ev["validity_free"]["t=1"] <= 1


def test_a_fresh_table_changes_the_prompts_without_retraining(trained, tmp_path, keys):
    from explore.tokenizer import encode_prompt
    from jobs.build_retrieval import RetrievalFields, build

    s = build(
        RetrievalFields(catalog=str(trained["catalog"]), model=str(trained["model"])), tmp_path / "fresh"
    )
    assert s["model"]["trained_with"] == read_model_info(trained["model"]).retrieval["version"]
    own, fresh = RetrievalTable.read(trained["model"]), RetrievalTable.read(tmp_path / "fresh")
    assert fresh.version != own.version  # all members now, the held-out ones too
    assert fresh.meta["transitions"] > own.meta["transitions"]
    from transformers import AutoTokenizer

    tok, info = AutoTokenizer.from_pretrained(trained["model"]), read_model_info(trained["model"])
    changed = [k for k in keys if fresh.lookup(k, TOP) != own.lookup(k, TOP)]
    if changed:
        k = changed[0]
        ids = [encode_prompt(tok, info.prompt_format, info.vocab, k, t.lookup(k, TOP)) for t in (own, fresh)]
        assert ids[0] != ids[1]


def test_rag_and_the_way_a_model_was_trained_must_agree(trained, tmp_path):
    with pytest.raises(ValueError, match=r"trained with retrieval augmentation .* sample it with --rag"):
        NoveltySampler(trained["model"])
    plain = tmp_path / "plain"
    plain.mkdir()
    info = read_model_info(trained["model"])
    replace(info, prompt_format=PromptFormat("plain", 2), retrieval=None).write(plain)
    with pytest.raises(ValueError, match=r"--rag: novelty model .* trained without retrieval augmentation"):
        NoveltySampler(plain, rag=True)
    with pytest.raises(ValueError, match=r"no retrieval.parquet .*jobs.build_retrieval"):
        NoveltySampler(trained["model"], rag=True, retrieval=tmp_path)


def test_ray_data_job_samples_with_a_fresher_table_and_refuses_without_rag(ray_local, trained, tmp_path):
    from jobs.build_retrieval import RetrievalFields, build
    from jobs.sample_novelty import SampleNoveltyConfig, sample

    fresh = build(RetrievalFields(catalog=str(trained["catalog"])), tmp_path / "fresh")
    cfg = SampleNoveltyConfig(
        catalog=str(trained["catalog"]), model=str(trained["model"]), n=6, limit=6, batch_size=3, kv_cache_mib=64,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"sample it with --rag"):
        sample(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "candidates").exists()
    s = sample(cfg.model_copy(update={"rag": True, "retrieval": str(tmp_path / "fresh")}), tmp_path / "out")
    assert s["retrieval"] == fresh["version"] and s["keys"] == 6 and s["valid_share"] == 1.0

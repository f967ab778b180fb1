"""The smollm2-135m preset: real pretrained SmolLM2-135M-Instruct weights, LoRA, merged, sampled by vLLM."""

from __future__ import annotations

import pytest

from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig
from explore.model_info import read_model_info
from explore.sampler import EngineConfig, NoveltySampler, SamplingConfig
from explore.sft import SFTConfig, train_novelty
from lm.lora import LoraSettings

pytestmark = pytest.mark.slow


def test_smollm2_preset_lora_merge_and_constrained_generation(ml_catalog, tmp_path):
    vocab = ClusterVocabulary.from_clusters(ml_catalog.clusters)
    histories = ml_catalog.histories.slice(0, 80)
    config = SFTConfig(
        base="smollm2-135m", max_steps=2, batch_size=2, max_eval_examples=4, lora=LoraSettings(r=4)
    )
    report = train_novelty(
        vocab, histories, tmp_path / "smol", config, ExampleConfig(max_per_key=2), progress=False
    )
    assert report["method"] == "lora" and report["prompt_format"]["style"] == "chat"
    assert report["trainable_params"] < 2_000_000  # adapters only, not the 135M base
    info = read_model_info(tmp_path / "smol")
    assert info.base == "smollm2-135m" and info.method == "lora" and info.lora == LoraSettings(r=4)
    assert SFTConfig.from_dict(info.config) == config and info.prompt_format.style == "chat"
    assert not list((tmp_path / "smol").glob("adapter_*"))  # merged into plain weights

    sampler = NoveltySampler(
        tmp_path / "smol", vocab=vocab, engine=EngineConfig(kv_cache_memory_bytes=128 << 20)
    )
    results = sampler.sample([(0, 7), (12, 3)], SamplingConfig(n=4, seed=1))
    for r in results:
        assert r.n_samples == 4 and r.n_invalid == 0
        assert sum(r.counts) + r.n_in_history == 4
        assert all(0 <= c < vocab.size for c in r.candidates)
    sampler.close()

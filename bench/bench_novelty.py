"""Novelty sampling throughput: our vLLM sampler and Ray Data job against a plain transformers
`generate` loop and against ray.data.llm (rows repeated n times, since it keeps only the first of n
samples per row), on the same tiny model, prompts and n, in the same run.

The `top` decoding (the model's exact probability of every name, vLLM prompt log-probabilities read
through the prefix cache) runs against a padded transformers forward per key over prompt + every name.

Every path is constrained to valid cluster names (transformers: prefix_allowed_tokens_fn over a trie of
the names' tokens), so each produces usable candidates. Also reports generated tokens/s and the model's
FLOPs per token (2 x parameters in the matmuls + attention over the context), hence achieved GFLOP/s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def _flops_per_token(config, context: int) -> float:
    d, L, v, f = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    kv = d * config.num_key_value_heads // config.num_attention_heads
    matmul = L * (2 * d * d + 2 * d * kv + 3 * d * f) + d * v
    return 2 * matmul + 2 * L * 2 * context * d  # weights, then QK^T and AV


def _hf_constrained(model_dir: Path, sampler, keys, n: int, temperature: float) -> tuple[float, int]:
    from bench.hf_baseline import ConstrainedGenerate

    hf = ConstrainedGenerate(model_dir, sampler.tokenizer, sampler.format, sampler.vocab)
    samples = 0
    t0 = time.perf_counter()
    for key in keys:
        samples += len(hf.sample(sampler.prompt_ids(key), n, temperature))
    return time.perf_counter() - t0, samples


def _ray_data_llm(model_dir: Path, sampler, keys, n: int, temperature: float) -> tuple[float, int, int]:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=str(model_dir),
        engine_kwargs={
            "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 256 << 20,
            "enable_chunked_prefill": False, "block_size": 32, "max_model_len": 256,
        },
        runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}},
        placement_group_config={"bundles": [{"CPU": 1}]},  # its detokenize actor would take the 2nd CPU
        # and starve the preprocess tasks (a deadlock on 2 cores): vLLM returns the text anyway
        batch_size=64, concurrency=1, chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
    )  # fmt: skip
    choices = [sampler.format.answer(name) for name in sampler.vocab.names]
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "tokenized_prompt": list(row["ids"]),
            "sampling_params": {
                "temperature": temperature,
                "max_tokens": 48,
                "n": 1,
                "structured_outputs": {"choice": choices},
            },
        },  # fmt: skip
        postprocess=lambda row: {"text": row["generated_text"]},
    )
    rows = [{"ids": sampler.prompt_ids(key)} for key in keys for _ in range(n)]
    t0 = time.perf_counter()
    out = processor(ray.data.from_items(rows)).take_all()
    valid = sum(sampler.vocab.id_of(r["text"]) is not None for r in out)
    return time.perf_counter() - t0, len(out), valid


def run(quick: bool = False) -> list[dict]:
    from bench.hf_baseline import exact_name_logprobs
    from catalog.build import build_movielens_catalog
    from catalog.vocabulary import ClusterVocabulary
    from explore.keys import build_key_set
    from explore.sampler import NoveltySampler, SamplingConfig
    from explore.sft import SFTConfig, train_novelty
    from jobs.sample_novelty import SampleNoveltyConfig, sample
    from jobs.services import ray_session

    n, temperature = 20, 1.5
    catalog = build_movielens_catalog()
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    all_keys = [tuple(k) for k in build_key_set(catalog.histories, 2, vocab.size)["history_key"].to_pylist()]
    keys = all_keys[: 32 if quick else 128]
    hf_keys = keys[: 8 if quick else 24]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog.save(tmp / "catalog")
        train_novelty(
            vocab, catalog.histories, tmp / "model", SFTConfig(max_steps=40 if quick else 150), progress=False
        )
        sampler = NoveltySampler(tmp / "model", vocab=vocab)
        sampler.sample(keys[:4], SamplingConfig(n=n))  # warm-up
        sampler.generated_tokens = sampler.prompt_tokens = 0
        t0 = time.perf_counter()
        res = sampler.sample(keys, SamplingConfig(n=n, temperature=temperature))
        bare_s = time.perf_counter() - t0
        bare = sum(r.n_samples for r in res) / bare_s
        gen_tokens, prompt_tokens = sampler.generated_tokens, sampler.prompt_tokens
        context = prompt_tokens / len(keys)
        flops = _flops_per_token(sampler.llm.llm_engine.model_config.hf_config, int(context))
        gflops = (gen_tokens + prompt_tokens) * flops / bare_s / 1e9
        hf_s, hf_samples = _hf_constrained(tmp / "model", sampler, hf_keys, n, temperature)
        hf = hf_samples / hf_s
        # the `top` decoding: every name's exact probability (vLLM prompt log-probabilities through the
        # prefix cache) against the same ranking by a padded transformers forward per key
        t0 = time.perf_counter()
        top = sampler.sample(keys, SamplingConfig(n=n, decoding="top"))
        top_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hf_rank = exact_name_logprobs(tmp / "model", sampler, hf_keys)
        hf_rank_s = time.perf_counter() - t0
        hf_top = [sorted(r, key=lambda c: (-r[c], c))[:n] for r in hf_rank]
        same_top = sum(a == b.candidates for a, b in zip(hf_top, top, strict=False)) / len(hf_top)
        recomputed = sampler.answer_requests_recomputed / max(1, sampler.answer_requests)
        sampler.close()
        top_keys, hf_rank_keys = len(keys) / top_s, len(hf_keys) / hf_rank_s
        print(
            f"  top decoding: {top_keys:,.1f} keys/s ({sampler.answer_requests / top_s:,.0f} name requests/s, "
            f"{recomputed:.1%} re-run without the cache; sampling: {len(keys) / bare_s:,.1f} keys/s); "
            f"transformers forward per key {hf_rank_keys:,.1f} keys/s; same top-{n} on {same_top:.0%} of keys"
        )
        print(
            f"  bare sampler: {len(keys)} keys x {n}: {bare:,.0f} samples/s, {gen_tokens / bare_s:,.0f} generated "
            f"tokens/s, {flops / 1e6:.2f} MFLOP/token, {gflops:.1f} GFLOP/s; transformers generate {hf:,.1f} samples/s"
        )
        with ray_session(num_cpus=2, address="local"):
            job_keys = tmp / "keys.parquet"
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"history_key": [list(k) for k in keys]}), job_keys)
            cfg = SampleNoveltyConfig(
                catalog=str(tmp / "catalog"), model=str(tmp / "model"), keys=str(job_keys), n=n
            )
            t0 = time.perf_counter()
            s = sample(cfg, tmp / "job")
            job = s["samples"] / (time.perf_counter() - t0)
            try:
                llm_s, llm_samples, llm_valid = _ray_data_llm(tmp / "model", sampler, keys, n, temperature)
                ray_llm = llm_samples / llm_s
                ray_llm_note = (
                    f"rows repeated n times, engine start included, {llm_valid}/{llm_samples} valid"
                )
            except Exception as exc:  # report, do not hide: the baseline's own failure is a result
                ray_llm, ray_llm_note = float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            print(
                f"  Ray Data job {job:,.0f} samples/s (engine start included); ray.data.llm {ray_llm:,.1f} ({ray_llm_note})"
            )
    detail = {
        "keys": len(keys), "n": n, "temperature": temperature, "generated_tokens_per_s": gen_tokens / bare_s,
        "mflop_per_token": flops / 1e6, "achieved_gflop_s": gflops, "mean_prompt_tokens": context,
    }  # fmt: skip
    rows.append(
        {"name": "novelty_sampler", "value": bare, "unit": "samples/s", "baseline": "transformers generate loop",
         "baseline_value": hf, "ratio": bare / hf, "ratio_meaning": "speed-up over the baseline", "detail": detail}
    )  # fmt: skip
    rows.append(
        {"name": "novelty_ray_job", "value": job, "unit": "samples/s", "baseline": "ray.data.llm, rows x n",
         "baseline_value": ray_llm, "ratio": job / ray_llm if ray_llm == ray_llm else float("nan"),
         "ratio_meaning": "speed-up over the baseline", "detail": {"ray_data_llm": ray_llm_note, "job": s}}
    )  # fmt: skip
    rows.append(
        {"name": "novelty_top_decoding", "value": top_keys, "unit": "keys/s",
         "baseline": "transformers padded forward per key (prompt + every name)", "baseline_value": hf_rank_keys,
         "ratio": top_keys / hf_rank_keys, "ratio_meaning": "speed-up over the baseline",
         "detail": {"keys": len(keys), "baseline_keys": len(hf_keys), "sample_decoding_keys_per_s": len(keys) / bare_s,
                    "same_top_n_share": same_top, "recomputed_share": recomputed}}
    )  # fmt: skip
    return rows

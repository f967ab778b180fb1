"""Ray Data job: sample the novelty LLM with vLLM for a set of history keys; write candidates as parquet.

    python -m jobs.sample_novelty --catalog runs/<demo>/catalog --model runs/<demo>/novelty --out runs/cands
    python -m jobs.sample_novelty ... --keys all            # every M^K tuple
    python -m jobs.sample_novelty ... --keys members        # one key per member (member_id kept)
    python -m jobs.sample_novelty ... --keys my_keys.parquet  # a history_key column (+ member_id)
    python -m jobs.sample_novelty ... --decoding top        # the model's 20 most likely names per key
    python -m jobs.sample_novelty ... --rag                 # a model trained with --rag, its own table
    python -m jobs.sample_novelty ... --rag --retrieval runs/retrieval-fresh   # a table from jobs.build_retrieval
    RAY_ADDRESS=ray://head:10001 python -m jobs.sample_novelty ...   # on a cluster (paths on shared storage)

Each key gets n samples (default 5 x --slots) at --temperature, each a valid cluster name (--decoding
top / distinct: the n most likely names / n different names drawn without replacement, from the model's
exact probability of every name; explore.sampler.DECODINGS); the engine
lives in Ray actors (fractional CPUs here, one GPU each where CUDA is present), built by
explore.pipeline.BulkPipeline, the same pipeline jobs.best_of_n runs. A model trained with --rag
(retrieval-augmented prompts) must be sampled with --rag, and one trained without is refused with it. Outputs in --out:
candidates/*.parquet (catalog.schemas.NOVELTY_CANDIDATES, one row per key, every sample counted),
quarantine.parquet (key rows that were not K known cluster ids, with the reason), summary.json. An
--out that holds files but no candidates/ folder (not an earlier run of this job) is refused at the start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.cli import job_parser
from jobs.common import merge_config, run_main
from jobs.quiet import VLLM_STREAM_ENV

OWN_FILES = ("candidates",)  # what marks an --out as this job's: the sampled candidates folder


class SamplingOptions(BaseModel):
    """The novelty sampling options of every job that samples the novelty LLM (this one, jobs.best_of_n)."""

    model_config = ConfigDict(extra="forbid")
    keys: str = Field(
        "observed", description="observed, all, members, or a parquet file with history_key (+ member_id)"
    )
    slots: int = Field(4, ge=1, description="novel clusters the cache will hold per key")
    n: int | None = Field(None, ge=1, description="samples per key (default 5 x slots)")
    temperature: float = Field(1.5, gt=0, le=2, description="sampling temperature (vLLM accepts at most 2)")
    top_k: int = Field(
        0,
        ge=0,
        description="sample among the k most likely next tokens only, after the name constraint (0: all)",
    )
    decoding: Literal["sample", "top", "distinct"] = Field(
        "sample",
        description="sample: n draws with replacement at --temperature (the papers'); top: the model's n most "
        "likely names (exact probabilities); distinct: n different names drawn at --temperature",
    )
    seed: int = Field(0, description="base seed; each key's seed derives from it and the key")
    batch_size: int = Field(64, ge=1, description="keys per vLLM call (and per scoring call)")
    novelty_actors: int = Field(
        0,
        ge=0,
        description="vLLM engine replicas (0: one with a GPU; without one, a single-threaded actor per core, at most 4)",
    )
    novelty_gpus: float | None = Field(
        None, ge=0, description="GPUs per vLLM actor (default with CUDA: 1, or 0.5 beside a scorer; else 0)"
    )
    num_cpus: float = Field(
        0.5, gt=0, description="CPUs per model actor (fractional: a whole CPU each deadlocks 2-core machines)"
    )
    kv_cache_mib: int = Field(256, ge=1, description="CPU KV cache per engine, MiB")
    threads: int = Field(
        0,
        ge=0,
        description="torch threads per CPU actor (0: this machine's cores / actors; set it on a cluster)",
    )
    limit: int | None = Field(None, ge=1, description="only the first N keys (smoke runs)")
    rag: bool = Field(
        False,
        description="retrieval-augmented prompts (required for a model trained with --rag, refused otherwise)",
    )
    retrieval: str | None = Field(
        None,
        description="with --rag: a table folder from jobs.build_retrieval (default: the model's own table)",
    )

    @model_validator(mode="after")
    def _decoding_has_no_top_k(self):
        if self.decoding != "sample" and self.top_k:
            raise ValueError(
                f"--top-k {self.top_k} truncates sampled tokens; --decoding {self.decoding} ranks whole names by "
                "the model's exact probability and has no top-k: drop --top-k or use --decoding sample."
            )
        return self

    def retrieval_version(self, model: str) -> str | None:
        """The version of the table the prompts will read (None without --rag); checks --rag against the
        model (explore.sampler.resolve_retrieval) before any Ray work."""
        from explore import read_model_info, resolve_retrieval

        table = resolve_retrieval(Path(model), read_model_info(model), self.rag, self.retrieval)
        return None if table is None else table.version

    @property
    def samples_per_key(self) -> int:
        return self.n or 5 * self.slots

    def sampling(self):
        from explore import SamplingConfig

        return SamplingConfig(
            n=self.samples_per_key,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
            decoding=self.decoding,
        )

    def resources(self, **more):
        from explore import Resources

        return Resources(
            batch_size=self.batch_size, num_cpus=self.num_cpus, threads=self.threads,
            kv_cache_mib=self.kv_cache_mib, novelty_actors=self.novelty_actors,
            novelty_gpus=self.novelty_gpus, env=dict(VLLM_STREAM_ENV), **more,
        )  # fmt: skip


class SampleNoveltyFields(SamplingOptions):
    catalog: str = Field(description="catalog folder")
    model: str = Field(description="novelty model folder (python -m jobs.train_novelty)")


class SampleNoveltyConfig(SampleNoveltyFields):
    out: str = Field("runs/candidates", description="output folder")


def checked_model_info(flag: str, info, vocab, catalog: str, retrain: str):
    """`info` (a model folder's typed info) if its clusters are the catalog's, else a ValueError naming the
    flag and the fix."""
    if info.vocab.signature() != vocab.signature():
        raise ValueError(
            f"{flag} model was trained on other clusters than --catalog {catalog}. Retrain it on this catalog "
            f"(`{retrain} --catalog {catalog}`)."
        )
    return info


def sample(cfg: SampleNoveltyFields, out: str | Path) -> dict:
    """Run the job on the connected Ray; returns the summary (also written to out/summary.json)."""
    from catalog import Catalog, ClusterVocabulary, check_output_folder, schemas, write_table
    from explore import BulkPipeline, load_keys, read_model_info

    out = check_output_folder(out, OWN_FILES, job="jobs.sample_novelty", what="novelty candidates")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    checked_model_info(
        "--model", read_model_info(cfg.model), vocab, cfg.catalog, "python -m jobs.train_novelty"
    )
    retrieval_version = cfg.retrieval_version(cfg.model)
    keys, quarantined = load_keys(
        cfg.keys, catalog.histories, catalog.history_k, catalog.n_clusters, limit=cfg.limit
    )
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    pipe = BulkPipeline(keys, cfg.resources()).sample(
        cfg.model, cfg.sampling(), vocab.signature(), rag=cfg.rag, retrieval=cfg.retrieval
    )
    result = pipe.run()
    cand_dir = result.save(out / "candidates")
    wall_s = time.perf_counter() - t0
    # written when empty too: no stale rows of an earlier run
    write_table(quarantined, out / "quarantine.parquet", schemas.KEY_QUARANTINE)

    table = result.table
    n_samples = sum(table["n_samples"].to_pylist())
    in_hist = sum(table["n_in_history"].to_pylist())
    invalid = sum(table["n_invalid"].to_pylist())
    distinct = [len(c) for c in table["candidates"].to_pylist()]
    summary = {
        "keys": table.num_rows,
        "key_set": cfg.keys,
        "quarantined_keys": quarantined.num_rows,
        "samples": n_samples,
        "samples_per_key": cfg.samples_per_key,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "decoding": cfg.decoding,
        "valid_share": round(1 - invalid / n_samples, 4) if n_samples else None,
        "in_history_share": round(in_hist / n_samples, 4) if n_samples else None,
        "mean_distinct_candidates": round(sum(distinct) / len(distinct), 2) if distinct else 0,
        "keys_with_fewer_candidates_than_slots": sum(d < cfg.slots for d in distinct),
        "wall_s": round(wall_s, 2),
        "samples_per_s": round(n_samples / wall_s, 1),
        "actors": pipe.novelty_actors,
        "num_gpus_per_actor": pipe.novelty_gpus,
        "stage_busy_s": {k: round(v, 3) for k, v in result.busy_s.items()},
        "model": str(Path(cfg.model).resolve()),
        "retrieval": retrieval_version,
        "out": str(cand_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_lines(s: dict) -> list[str]:
    return [
        f"novelty samples: {s['keys']} keys ({s['key_set']}) x {s['samples_per_key']} = {s['samples']} samples at "
        f"T={s['temperature']} (decoding {s['decoding']}); valid {s['valid_share']:.0%}, in-history dropped {s['in_history_share']:.1%}; "
        f"{s['mean_distinct_candidates']} distinct novel candidates per key "
        f"({s['keys_with_fewer_candidates_than_slots']} keys with fewer than the slots)",
        f"{s['wall_s']:.1f}s on {s['actors']} actor(s), {s['samples_per_s']:.0f} samples/s; "
        f"{s['quarantined_keys']} key rows quarantined; candidates in {s['out']}"
        + (f"; retrieval table {s['retrieval']}" if s.get("retrieval") else ""),
    ]


def main(argv: list[str] | None = None) -> None:
    args = job_parser(SampleNoveltyConfig, __doc__).parse_args(argv)

    def body() -> int:
        from catalog import check_output_folder
        from jobs.services import ray_session

        cfg = merge_config(SampleNoveltyConfig, args)
        check_output_folder(cfg.out, OWN_FILES, job="jobs.sample_novelty", what="novelty candidates")
        with ray_session():  # sample() checks --out again, for callers that skip main
            s = sample(cfg, cfg.out)
        for line in summary_lines(s):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

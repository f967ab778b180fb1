"""Ray Data job: sample the novelty LLM with vLLM for a set of history keys; write candidates as parquet.

    python -m jobs.sample_novelty --catalog runs/<demo>/catalog --model runs/<demo>/novelty --out runs/cands
    python -m jobs.sample_novelty ... --keys all            # every M^K tuple
    python -m jobs.sample_novelty ... --keys members        # one key per member (member_id kept)
    python -m jobs.sample_novelty ... --keys my_keys.parquet  # a history_key column (+ member_id)
    RAY_ADDRESS=ray://head:10001 python -m jobs.sample_novelty ...   # on a cluster (paths on shared storage)

Each key gets n samples (default 5 x --slots) at --temperature, each a valid cluster name; the engine
lives in Ray actors (fractional CPUs here, one GPU each where CUDA is present). Outputs in --out:
candidates/*.parquet (catalog.schemas.NOVELTY_CANDIDATES, one row per key, every sample counted),
quarantine.parquet (key rows that were not K known cluster ids, with the reason), summary.json. An
--out that holds files but no candidates/ folder (not an earlier run of this job) is refused at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.common import merge_config, run_main
from jobs.quiet import VLLM_STREAM_ENV


class SampleNoveltyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str  # catalog folder
    model: str  # novelty model folder (python -m jobs.train_novelty)
    keys: str = "observed"  # observed, all, members, or a parquet file with history_key (+ member_id)
    slots: int = Field(4, ge=1)  # novel clusters the cache will hold per key
    n: int | None = Field(None, ge=1)  # samples per key (default 5 x slots)
    temperature: float = Field(1.5, gt=0)
    seed: int = 0
    batch_size: int = Field(64, ge=1)  # keys per vLLM call
    actors: int = Field(1, ge=1)  # engine replicas
    num_cpus: float = Field(0.5, gt=0)  # per actor (fractional: a whole CPU each deadlocks 2-core machines)
    num_gpus: float | None = Field(None, ge=0)  # per actor; default 1 where CUDA is present, else 0
    kv_cache_mib: int = Field(256, ge=1)  # CPU KV cache per engine
    threads: int = Field(0, ge=0)  # torch threads per CPU engine (0: the node's cores / actors)
    limit: int | None = Field(None, ge=1)  # sample only the first N keys (smoke runs)

    @property
    def samples_per_key(self) -> int:
        return self.n or 5 * self.slots


class SampleNoveltyConfig(SampleNoveltyFields):
    out: str = "runs/candidates"


OWN_FILES = ("candidates",)  # what marks an --out as this job's: the sampled candidates folder
# vLLM logs to stderr in the engines' actors, so a quiet job files it with the rest (jobs.quiet)
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false", **VLLM_STREAM_ENV}
FLAGS = [
    "out", "catalog", "model", "keys", "slots", "n", "temperature", "seed", "batch_size", "actors",
    "num_cpus", "num_gpus", "kv_cache_mib", "threads", "limit",
]  # fmt: skip


def load_keys(cfg: SampleNoveltyFields, catalog):
    """(keys, quarantined) tables for the configured key set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.schemas import KEY_QUARANTINE
    from explore.keys import KEY_SETS, build_key_set, check_key_rows

    k, m = catalog.history_k, catalog.n_clusters
    if cfg.keys in KEY_SETS:
        keys = build_key_set(catalog.histories, k, m, cfg.keys)
        quarantined = KEY_QUARANTINE.empty_table()
    else:
        path = Path(cfg.keys)
        if not path.is_file():
            raise FileNotFoundError(f"--keys {cfg.keys}: not one of observed/all/members and not a file.")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"--keys {cfg.keys}: not a readable parquet file ({exc}).") from exc
        keys, quarantined = check_key_rows(table, k, m, source=str(path))
    if cfg.limit:
        keys = keys.slice(0, cfg.limit)
    return keys, quarantined


def sample(cfg: SampleNoveltyFields, out: str | Path) -> dict:
    """Run the job on the connected Ray; returns the summary (also written to out/summary.json)."""
    import ray

    from catalog.build import Catalog
    from catalog.io import read_table, replace_folder, staging_folder, write_table
    from catalog.outputs import check_output_folder
    from catalog.schemas import KEY_QUARANTINE, NOVELTY_CANDIDATES
    from catalog.vocabulary import ClusterVocabulary
    from explore.model_info import read_model_info
    from explore.stage import NoveltyStage

    out = check_output_folder(out, OWN_FILES, job="jobs.sample_novelty", what="novelty candidates")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    info = read_model_info(cfg.model)
    if info["clusters"]["signature"] != vocab.signature():
        raise ValueError(
            f"--model {cfg.model} was trained on other clusters than --catalog {cfg.catalog}. "
            "Retrain it with `python -m jobs.train_novelty --catalog` on this catalog."
        )
    keys, quarantined = load_keys(cfg, catalog)
    if keys.num_rows == 0:
        raise ValueError(f"--keys {cfg.keys}: no valid history keys ({quarantined.num_rows} quarantined).")
    out.mkdir(parents=True, exist_ok=True)

    num_gpus = cfg.num_gpus
    if num_gpus is None:
        import torch

        num_gpus = 1.0 if torch.cuda.is_available() else 0.0
    threads = cfg.threads or (0 if num_gpus else max(1, (os.cpu_count() or 1) // cfg.actors))
    model = str(Path(cfg.model).resolve())
    t0 = time.perf_counter()
    ds = ray.data.from_arrow(keys).repartition(max(1, -(-keys.num_rows // cfg.batch_size)))
    ds = ds.map_batches(
        NoveltyStage,
        fn_constructor_kwargs={
            "model": model,
            "sampling": {"n": cfg.samples_per_key, "temperature": cfg.temperature, "seed": cfg.seed},
            "engine": {"kv_cache_memory_bytes": cfg.kv_cache_mib << 20},
            "catalog_signature": vocab.signature(),
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        concurrency=cfg.actors,
        num_cpus=cfg.num_cpus,
        num_gpus=num_gpus,
        # Ray starts a fractional-CPU actor with OMP_NUM_THREADS=1; OpenMP reads it once, at process start
        runtime_env={"env_vars": {**ENGINE_ENV, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}},
    )
    # Ray appends to an existing folder: write a fresh one and swap it in, so a rerun never mixes runs
    staging = staging_folder(out / "candidates")
    try:
        ds.write_parquet(str(staging.resolve()))
        cand_dir = replace_folder(staging, out / "candidates")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    wall_s = time.perf_counter() - t0
    write_table(quarantined, out / "quarantine.parquet", KEY_QUARANTINE)  # empty when none: no stale rows

    table = read_table(cand_dir, NOVELTY_CANDIDATES)
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
        "valid_share": round(1 - invalid / n_samples, 4) if n_samples else None,
        "in_history_share": round(in_hist / n_samples, 4) if n_samples else None,
        "mean_distinct_candidates": round(sum(distinct) / len(distinct), 2) if distinct else 0,
        "keys_with_fewer_candidates_than_slots": sum(d < cfg.slots for d in distinct),
        "wall_s": round(wall_s, 2),
        "samples_per_s": round(n_samples / wall_s, 1),
        "actors": cfg.actors,
        "num_gpus_per_actor": num_gpus,
        "model": model,
        "out": str(cand_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_lines(s: dict) -> list[str]:
    return [
        f"novelty samples: {s['keys']} keys ({s['key_set']}) x {s['samples_per_key']} = {s['samples']} samples at "
        f"T={s['temperature']}; valid {s['valid_share']:.0%}, in-history dropped {s['in_history_share']:.1%}; "
        f"{s['mean_distinct_candidates']} distinct novel candidates per key "
        f"({s['keys_with_fewer_candidates_than_slots']} keys with fewer than the slots)",
        f"{s['wall_s']:.1f}s on {s['actors']} actor(s), {s['samples_per_s']:.0f} samples/s; "
        f"{s['quarantined_keys']} key rows quarantined; candidates in {s['out']}",
    ]


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The novelty sampling flags this job shares with jobs.best_of_n."""
    p.add_argument("--slots", type=int, help="novel clusters cached per key (default 4)")
    p.add_argument("--n", type=int, help="samples per key (default 5 x slots)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1.5)")
    p.add_argument("--seed", type=int)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", help="catalog folder")
    p.add_argument("--model", help="novelty model folder (python -m jobs.train_novelty)")
    p.add_argument("--out", help="output folder (default runs/candidates)")
    p.add_argument("--config", help="TOML or JSON file with the fields of SampleNoveltyConfig")
    p.add_argument("--keys", help="observed (default), all, members, or a parquet file with history_key")
    add_sampling_flags(p)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="keys per vLLM call (default 64)")
    p.add_argument("--actors", type=int, help="engine replicas (default 1)")
    p.add_argument("--num-cpus", dest="num_cpus", type=float, help="CPUs per actor (default 0.5)")
    p.add_argument("--num-gpus", dest="num_gpus", type=float, help="GPUs per actor (default: 1 with CUDA)")
    p.add_argument("--kv-cache-mib", dest="kv_cache_mib", type=int, help="CPU KV cache per engine (256)")
    p.add_argument(
        "--threads",
        type=int,
        help="threads per CPU engine (default: this machine's cores / actors; set it on a cluster)",
    )
    p.add_argument("--limit", type=int, help="only the first N keys")
    args = p.parse_args(argv)

    def body() -> int:
        from catalog.outputs import check_output_folder
        from jobs.services import ray_session

        cfg = merge_config(SampleNoveltyConfig, args, FLAGS)
        check_output_folder(cfg.out, OWN_FILES, job="jobs.sample_novelty", what="novelty candidates")
        with ray_session():  # sample() checks --out again, for callers that skip main
            s = sample(cfg, cfg.out)
        for line in summary_lines(s):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

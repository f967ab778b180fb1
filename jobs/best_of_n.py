"""The main job: history keys -> novelty samples (vLLM) -> alignment scores -> best-of-n -> Redis.

    REDIS_URL=redis://host:6379/0 python -m jobs.best_of_n --catalog runs/<demo>/catalog \\
        --novelty runs/<demo>/novelty --alignment runs/<demo>/alignment --out runs/best-of-n
    python -m jobs.best_of_n ... --keys all --slots 4 --min-score 0.2
    RAY_ADDRESS=ray://head:10001 REDIS_URL=... python -m jobs.best_of_n ...   # on a cluster

One Ray Data pipeline: the key set (observed, all M^K, or a parquet file of keys) is sampled n times
per key by the novelty LLM in vLLM actors (each sample a valid cluster name, in-history ones dropped),
each distinct candidate is scored by the alignment model in torch actors (on a GPU when there is
one), the top --slots clusters per key are selected (ties by sample count, then id), and actors
write them into a new version of the Redis cache. When every key is written the driver adds the
back-off entries (key suffixes and the global best), then switches the live pointer in one atomic
step; the previous version stays for --keep-previous-s for rollback. A failure before the switch
leaves the previous version live (the partial one expires by itself).

Outputs in --out: selected/*.parquet (catalog.schemas.BEST_OF_N, one row per key: samples, scores,
what was cached; for audit), quarantine.parquet (key rows that were not K known ids), summary.json.
With REDIS_URL unset a local redis-server is started for the run and stopped after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.common import merge_config, run_main
from jobs.sample_novelty import add_sampling_flags

OWN_FILES = ("selected",)  # what marks --out as an earlier output of this job (summary.json: many jobs)
TIMING_COLUMNS = {"sample": "_sample_s", "score": "_score_s", "write": "_write_s"}


class BestOfNFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str
    novelty: str  # novelty model folder (jobs.train_novelty)
    alignment: str  # alignment model folder, or the output folder of jobs.train_alignment
    keys: str = "observed"  # observed, all, or a parquet file with a history_key column
    slots: int = Field(4, ge=1)  # clusters cached per key
    n: int | None = Field(None, ge=1)  # novelty samples per key (default 5 x slots)
    temperature: float = Field(1.5, gt=0)
    min_score: float = Field(0.0, ge=0, le=1)  # candidates scoring below are never cached
    seed: int = 0
    namespace: str = "explore"  # Redis key namespace
    keep_previous_s: int = Field(7 * 86_400, ge=1)  # how long the replaced version stays for rollback
    staging_ttl_s: int = Field(86_400, ge=1)  # an unfinished version expires this long after its last write
    min_entries_ratio: float = Field(0.5, ge=0, le=1)  # refuse a version with fewer x the live one's entries
    force_publish: bool = False  # publish even when k, the catalog or the size differ from the live version
    allow_evictable_redis: bool = False  # publish into a Redis whose maxmemory-policy may evict live keys
    batch_size: int = Field(64, ge=1)  # keys per vLLM call and per scoring call
    novelty_actors: int = Field(1, ge=1)
    alignment_actors: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)  # per actor
    novelty_gpus: float | None = Field(None, ge=0)  # per actor; default 0.5 with CUDA (sharing with scoring)
    alignment_gpus: float | None = Field(None, ge=0)
    kv_cache_mib: int = Field(256, ge=1)
    threads: int = Field(0, ge=0)  # torch/OpenMP threads per CPU actor (0: this machine's cores)
    limit: int | None = Field(None, ge=1)

    @property
    def samples_per_key(self) -> int:
        return self.n or 5 * self.slots


class BestOfNConfig(BestOfNFields):
    out: str = "runs/best-of-n"


FLAGS = [
    "out", "catalog", "novelty", "alignment", "keys", "slots", "n", "temperature", "min_score", "seed",
    "namespace", "keep_previous_s", "staging_ttl_s", "min_entries_ratio", "force_publish",
    "allow_evictable_redis", "batch_size", "novelty_actors", "alignment_actors",
    "num_cpus", "novelty_gpus", "alignment_gpus", "kv_cache_mib", "threads", "limit",
]  # fmt: skip


class Timed:
    """Wraps a Ray Data stage class; each output row carries its share of the batch's seconds in `column`,
    so the driver can tell where the pipeline's time went."""

    def __init__(self, stage: type, column: str, kwargs: dict):
        self.stage, self.column = stage(**kwargs), column

    def __call__(self, batch):
        import pyarrow as pa

        t0 = time.perf_counter()
        out = self.stage(batch)
        per_row = (time.perf_counter() - t0) / max(out.num_rows, 1)
        return out.append_column(self.column, pa.array([per_row] * out.num_rows, pa.float64()))


def model_version(folder: str | Path, info_file: str) -> str:
    """A short id of a trained model: the hash of its info file, which holds its config and report."""
    return hashlib.sha256((Path(folder) / info_file).read_bytes()).hexdigest()[:12]


def alignment_folder(path: str) -> Path:
    """The model folder itself, or the model/ inside a jobs.train_alignment output folder."""
    from alignment.model import INFO_FILE

    p = Path(path)
    return p / "model" if not (p / INFO_FILE).is_file() and (p / "model" / INFO_FILE).is_file() else p


def run(cfg: BestOfNFields, out: str | Path, redis_url: str) -> dict:
    """Run the pipeline on the connected Ray and publish into Redis at redis_url; returns the summary."""
    import pyarrow.compute as pc
    import ray
    import redis

    from alignment.model import INFO_FILE as ALIGNMENT_INFO
    from alignment.model import read_alignment_info
    from alignment.stage import AlignmentStage
    from catalog.build import Catalog
    from catalog.io import read_table, replace_folder, staging_folder, write_table
    from catalog.outputs import check_output_folder
    from catalog.schemas import BEST_OF_N, KEY_QUARANTINE
    from catalog.vocabulary import ClusterVocabulary
    from explore.best_of_n import SelectionConfig, backoff_entries, select_batch
    from explore.cache import CacheError, CacheWriter, SecretURL, encode_entry
    from explore.keys import key_table
    from explore.model_info import INFO_FILE as NOVELTY_INFO
    from explore.model_info import read_model_info
    from explore.stage import CacheWriteStage, NoveltyStage
    from jobs.sample_novelty import ENGINE_ENV, load_keys

    out = check_output_folder(out, OWN_FILES, job="jobs.best_of_n", what="best-of-n output")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    align_dir = alignment_folder(cfg.alignment).resolve()
    for flag, info in (
        ("--novelty", read_model_info(cfg.novelty)),
        ("--alignment", read_alignment_info(align_dir)),
    ):
        if info["clusters"]["signature"] != vocab.signature():
            raise ValueError(
                f"{flag} model was trained on other clusters than --catalog {cfg.catalog}; retrain it on this catalog."
            )
    if cfg.keys == "members":
        raise ValueError("--keys members: the cache is per history key; use observed, all, or a key file.")
    selection = SelectionConfig(cfg.slots, cfg.min_score)
    keys, quarantined = load_keys(cfg, catalog)
    distinct = sorted({tuple(k) for k in keys["history_key"].to_pylist()})  # one entry per key
    keys = key_table(distinct)
    if keys.num_rows == 0:
        raise ValueError(f"--keys {cfg.keys}: no valid history keys ({quarantined.num_rows} quarantined).")
    out.mkdir(parents=True, exist_ok=True)

    cuda = _cuda()
    novelty_gpus = cfg.novelty_gpus if cfg.novelty_gpus is not None else (0.5 if cuda else 0.0)
    alignment_gpus = cfg.alignment_gpus if cfg.alignment_gpus is not None else (0.5 if cuda else 0.0)
    threads = str(cfg.threads or os.cpu_count() or 1)
    env = {"env_vars": {**ENGINE_ENV, "OMP_NUM_THREADS": threads}}
    novelty_dir = str(Path(cfg.novelty).resolve())
    meta = {
        "k": catalog.history_k,
        "slots": cfg.slots,
        "samples_per_key": cfg.samples_per_key,
        "temperature": cfg.temperature,
        "min_score": cfg.min_score,
        "seed": cfg.seed,
        "keys": keys.num_rows,
        "novelty_model": model_version(novelty_dir, NOVELTY_INFO),
        "novelty_path": novelty_dir,
        "alignment_model": model_version(align_dir, ALIGNMENT_INFO),
        "alignment_path": str(align_dir),
        "catalog_signature": vocab.signature(),
    }
    client = redis.Redis.from_url(redis_url)
    writer = CacheWriter(client, cfg.namespace, staging_ttl_s=cfg.staging_ttl_s)
    writer.begin(meta, force=cfg.force_publish, allow_evictable=cfg.allow_evictable_redis)
    t0 = time.perf_counter()
    try:
        # blocks cut here: a repartition task would need a whole CPU that the actors' shares leave free
        blocks = [keys.slice(i, cfg.batch_size) for i in range(0, keys.num_rows, cfg.batch_size)]
        ds = ray.data.from_arrow(blocks)
        common = dict(
            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=cfg.num_cpus, runtime_env=env
        )
        ds = ds.map_batches(
            Timed,
            fn_constructor_kwargs={
                "stage": NoveltyStage,
                "column": TIMING_COLUMNS["sample"],
                "kwargs": {
                    "model": novelty_dir,
                    "sampling": {"n": cfg.samples_per_key, "temperature": cfg.temperature, "seed": cfg.seed},
                    "engine": {"kv_cache_memory_bytes": cfg.kv_cache_mib << 20},
                    "catalog_signature": vocab.signature(),
                },
            },
            concurrency=cfg.novelty_actors,
            num_gpus=novelty_gpus,
            **common,
        )
        ds = ds.map_batches(
            Timed,
            fn_constructor_kwargs={
                "stage": AlignmentStage,
                "column": TIMING_COLUMNS["score"],
                "kwargs": {"model": str(align_dir), "catalog_signature": vocab.signature()},
            },
            concurrency=cfg.alignment_actors,
            num_gpus=alignment_gpus,
            **common,
        )
        ds = ds.map_batches(
            select_batch,
            fn_kwargs={"top_k": cfg.slots, "min_score": cfg.min_score},
            batch_format="pyarrow",
            num_cpus=0.1,  # light: a whole CPU here would wait for the actors' share on small machines
        )
        ds = ds.map_batches(
            Timed,
            fn_constructor_kwargs={
                "stage": CacheWriteStage,
                "column": TIMING_COLUMNS["write"],
                "kwargs": {
                    "url": SecretURL(redis_url),  # redacted wherever Ray shows the actor's arguments
                    "version": writer.version,
                    "namespace": cfg.namespace,
                    "staging_ttl_s": cfg.staging_ttl_s,
                },
            },
            concurrency=1,
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            num_cpus=0.1,
        )
        ds = ds.materialize()
        busy = {stage: float(ds.sum(col) or 0.0) for stage, col in TIMING_COLUMNS.items()}
        staging = staging_folder(out / "selected")
        try:
            ds.drop_columns(list(TIMING_COLUMNS.values())).write_parquet(str(staging.resolve()))
            selected_dir = replace_folder(staging, out / "selected")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # after the swap: a run that failed before leaves no file that would make a rerun refuse --out
        write_table(quarantined, out / "quarantine.parquet", KEY_QUARANTINE)
        pipeline_s = time.perf_counter() - t0

        table = read_table(selected_dir, BEST_OF_N)
        t1 = time.perf_counter()
        backoff = backoff_entries(
            table["history_key"].to_pylist(),
            table["candidates"].to_pylist(),
            table["scores"].to_pylist(),
            selection,
        )
        writer.write((f, encode_entry(c, s)) for f, (c, s) in backoff.items())
        cached = int(pc.sum(table["cached"]).as_py() or 0)
        result = writer.commit(
            cached + len(backoff),
            keep_previous_s=cfg.keep_previous_s,
            min_entries_ratio=cfg.min_entries_ratio,
            force=cfg.force_publish,
        )
        finish_s = time.perf_counter() - t1
    except BaseException as exc:
        try:
            writer.abort()
        except Exception:  # noqa: BLE001  (the staging TTL removes what abort could not)
            pass
        cause = cache_error_in(exc)
        if cause is not None and cause is not exc:  # raised in a Ray actor: the user error, not Ray's wrapper
            raise CacheError(str(cause)) from None
        raise
    finally:
        client.close()
    wall_s = time.perf_counter() - t0

    n_samples = int(pc.sum(table["n_samples"]).as_py())
    invalid = int(pc.sum(table["n_invalid"]).as_py())
    in_hist = int(pc.sum(table["n_in_history"]).as_py())
    distinct_c = pc.list_value_length(table["candidates"]).to_numpy()
    selected_n = pc.list_value_length(table["selected"]).to_numpy()
    summary = {
        "keys": table.num_rows,
        "key_set": cfg.keys,
        "quarantined_keys": quarantined.num_rows,
        "samples": n_samples,
        "samples_per_key": cfg.samples_per_key,
        "valid_share": round(1 - invalid / n_samples, 4) if n_samples else None,
        "in_history_share": round(in_hist / n_samples, 4) if n_samples else None,
        "mean_distinct_candidates": round(float(distinct_c.mean()), 2),
        "mean_selected": round(float(selected_n.mean()), 2),
        "keys_cached": cached,
        "keys_with_fewer_than_slots": int((selected_n < cfg.slots).sum()),
        "backoff_entries": len(backoff),
        "entries": result.entries,
        "version": result.version,
        "previous_version": result.previous,
        "namespace": cfg.namespace,
        "publish_s": round(busy["write"] + finish_s, 3),
        "stage_busy_s": {k: round(v, 3) for k, v in busy.items()},
        "pipeline_s": round(pipeline_s, 2),
        "wall_s": round(wall_s, 2),
        "keys_per_s": round(table.num_rows / wall_s, 2),
        "novelty_model": meta["novelty_model"],
        "alignment_model": meta["alignment_model"],
        "gpus_per_actor": {"novelty": novelty_gpus, "alignment": alignment_gpus},
        "out": str(selected_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def cache_error_in(exc: BaseException):
    """The CacheError (a refused or failed publish step) behind `exc`, also one raised inside a Ray actor and
    wrapped by Ray Data; None when there is none."""
    from explore.cache import CacheError

    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CacheError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        if isinstance(getattr(e, "args", None), tuple):
            stack += [a for a in e.args if isinstance(a, BaseException)]
    # Ray Data re-raises a UDF's error without its chain; the remote traceback text keeps its message
    found = re.findall(r"^explore\.cache(?:\.\w+)?\.CacheError: (.+)$", str(exc), flags=re.MULTILINE)
    return CacheError(found[-1]) if found else None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def summary_lines(s: dict) -> list[str]:
    b = s["stage_busy_s"]
    return [
        f"best-of-n: {s['keys']} keys ({s['key_set']}) x {s['samples_per_key']} samples = {s['samples']}; valid "
        f"{s['valid_share']:.0%}, in-history dropped {s['in_history_share']:.1%}; {s['mean_distinct_candidates']} "
        f"distinct candidates and {s['mean_selected']} selected per key ({s['keys_with_fewer_than_slots']} keys "
        "with fewer than the slots)",
        f"published version {s['version']} to Redis namespace {s['namespace']!r}: {s['keys_cached']} key entries + "
        f"{s['backoff_entries']} back-off entries in {s['publish_s']:.2f}s; previous version "
        f"{s['previous_version']} kept for rollback",
        f"{s['wall_s']:.1f}s, {s['keys_per_s']} keys/s; stage busy time: sampling {b['sample']:.1f}s, scoring "
        f"{b['score']:.1f}s, writing {b['write']:.2f}s; models novelty {s['novelty_model']}, alignment "
        f"{s['alignment_model']}; audit table in {s['out']}",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", help="catalog folder")
    p.add_argument("--novelty", help="novelty model folder (python -m jobs.train_novelty)")
    p.add_argument("--alignment", help="alignment model folder or jobs.train_alignment output folder")
    p.add_argument("--out", help="output folder for the audit table and summary (default runs/best-of-n)")
    p.add_argument("--config", help="TOML or JSON file with the fields of BestOfNConfig")
    p.add_argument("--keys", help="observed (default), all, or a parquet file with a history_key column")
    add_sampling_flags(p)
    p.add_argument("--min-score", dest="min_score", type=float, help="lowest alignment score cached (0)")
    p.add_argument("--namespace", help="Redis key namespace (explore)")
    p.add_argument("--keep-previous-s", dest="keep_previous_s", type=int, help="rollback window, s (7 days)")
    p.add_argument(
        "--staging-ttl-s", dest="staging_ttl_s", type=int, help="TTL of an unfinished version (1 day)"
    )
    p.add_argument(
        "--min-entries-ratio",
        dest="min_entries_ratio",
        type=float,
        help="refuse a version with fewer than this x the live version's entries (0.5)",
    )
    p.add_argument(
        "--force-publish",
        dest="force_publish",
        action="store_const",
        const=True,
        help="publish even if k, the catalog or the size differ from the live version",
    )
    p.add_argument(
        "--allow-evictable-redis",
        dest="allow_evictable_redis",
        action="store_const",
        const=True,
        help="publish into a Redis whose maxmemory-policy (allkeys-*) may evict the live version",
    )
    p.add_argument("--batch-size", dest="batch_size", type=int, help="keys per batch (64)")
    p.add_argument("--novelty-actors", dest="novelty_actors", type=int, help="vLLM engine replicas (1)")
    p.add_argument("--alignment-actors", dest="alignment_actors", type=int, help="scoring replicas (1)")
    p.add_argument("--num-cpus", dest="num_cpus", type=float, help="CPUs per actor (0.5)")
    p.add_argument(
        "--novelty-gpus", dest="novelty_gpus", type=float, help="GPUs per vLLM actor (0.5 with CUDA)"
    )
    p.add_argument(
        "--alignment-gpus", dest="alignment_gpus", type=float, help="GPUs per scorer (0.5 with CUDA)"
    )
    p.add_argument("--kv-cache-mib", dest="kv_cache_mib", type=int, help="CPU KV cache per engine (256)")
    p.add_argument("--threads", type=int, help="threads per CPU actor (default: this machine's cores)")
    p.add_argument("--limit", type=int, help="only the first N keys")
    args = p.parse_args(argv)

    def body() -> int:
        from catalog.outputs import check_output_folder
        from jobs.services import ray_session, redis_service

        cfg = merge_config(BestOfNConfig, args, FLAGS)
        check_output_folder(cfg.out, OWN_FILES, job="jobs.best_of_n", what="best-of-n output")  # before Ray
        with ray_session(), redis_service() as r:
            s = run(cfg, cfg.out, r.url)
        for line in summary_lines(s):
            print(line)
        if r.server is not None:
            print("note: REDIS_URL is unset, so the cache lived in a redis-server started for this run only.")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

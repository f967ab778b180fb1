"""Rebuild the novelty LLM's retrieval table from fresh logs, without retraining the model.

    python -m jobs.build_retrieval --catalog runs/<demo>/catalog --out runs/retrieval
    python -m jobs.build_retrieval --catalog DIR --logs runs/<demo>/logs/explore runs/<demo>/loop/round-01/feedback \\
        --recent-days 30 --out runs/retrieval-fresh
    python -m jobs.sample_novelty ... --rag --retrieval runs/retrieval-fresh     # sample with the fresh table
    python -m jobs.best_of_n ... --rag --retrieval runs/retrieval-fresh          # publish with it

The table (explore.retrieval) counts, for every history key, its suffixes and overall, the next novel
clusters members moved to: from the catalog's histories (each step's next cluster outside the key, the
fine-tuning transitions) and from joined feedback logs (--logs: an impression of a cluster outside the
row's key that was clicked, liked or shared; rows that fail the log checks are quarantined and counted).
--since (unix seconds) or --recent-days (back from the newest event in the sources) keeps recent
transitions only. Outputs in --out: retrieval.parquet, retrieval.json (the version: a hash of the rows,
the sources, the window) and summary.json. A novelty model trained with --rag reads any table built for
its catalog and K; --model checks that before writing.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main

OWN_FILES = ("retrieval.json",)  # what marks --out as an earlier table folder


class RetrievalFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str = Field(description="catalog folder (its clusters, K and members' histories)")
    logs: list[str] = Field([], description="joined feedback log folders (or part files)")
    histories: bool = Field(True, description="count the catalog's histories (--no-histories: logs only)")
    since: int | None = Field(None, ge=0, description="keep transitions at or after this unix time, s")
    recent_days: float | None = Field(
        None, gt=0, description="keep the last N days before the newest event in the sources"
    )
    model: str | None = Field(None, description="a novelty model trained with --rag: check the table fits it")


class RetrievalConfig(RetrievalFields):
    out: str = Field("runs/retrieval", description="table folder to write")


def _newest(histories, feedback) -> int | None:
    """The newest event in the sources, unix seconds."""
    import pyarrow.compute as pc

    times = []
    if histories is not None and histories.num_rows:
        times.append(pc.max(pc.list_flatten(histories["timestamps"])).as_py())
    if feedback is not None and feedback.num_rows:
        times.append((pc.max(feedback["timestamp"]).as_py() or 0) // 1000)
    times = [t for t in times if t is not None]
    return max(times) if times else None


def build(cfg: RetrievalFields, out: str | Path) -> dict:
    """Build the table and write it to `out`; returns the summary (also out/summary.json)."""
    from catalog import Catalog, ClusterVocabulary, FeedbackRules, check_output_folder, read_feedback
    from explore import build_table

    if not cfg.histories and not cfg.logs:
        raise ValueError(
            "--no-histories without --logs: no source to count transitions from; give --logs DIR."
        )
    if cfg.since is not None and cfg.recent_days is not None:
        raise ValueError(
            f"--since {cfg.since} and --recent-days {cfg.recent_days}: give one window, not both."
        )
    out = check_output_folder(out, OWN_FILES, job="jobs.build_retrieval", what="retrieval table")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    histories = catalog.histories if cfg.histories else None
    feedback, log_stats = None, None
    if cfg.logs:
        checked = read_feedback(cfg.logs, FeedbackRules(catalog.history_k, catalog.n_clusters))
        feedback, log_stats = checked.good, checked.stats
    since = cfg.since
    if cfg.recent_days is not None:
        newest = _newest(histories, feedback)
        since = None if newest is None else int(newest - cfg.recent_days * 86_400)
    sources = ([f"histories {cfg.catalog}"] if histories is not None else []) + [
        f"feedback {p}" for p in cfg.logs
    ]
    table = build_table(
        k=catalog.history_k, n_clusters=catalog.n_clusters, catalog_signature=vocab.signature(),
        histories=histories, feedback=feedback, since=since, sources=sources,
    )  # fmt: skip
    if not table.meta["transitions"]:
        raise ValueError(
            f"no transitions in {sources} (since={since}): the table would be empty. Widen the window "
            "(--recent-days, --since) or add sources (--logs)."
        )
    model_check = None
    if cfg.model:
        from explore import read_model_info

        info = read_model_info(cfg.model)
        if not info.rag:
            raise ValueError(
                f"--model {cfg.model}: trained without retrieval augmentation; it reads no table. Retrain it "
                "with `python -m jobs.train_novelty --rag`, or drop --model."
            )
        table.check_for(
            k=info.prompt_format.k, catalog_signature=info.vocab.signature(), source=f"--model {cfg.model}"
        )
        model_check = {"model": str(Path(cfg.model).resolve()), "trained_with": info.retrieval.get("version")}
    table.write(out)
    summary = {
        "version": table.version,
        "k": table.k,
        "transitions": table.meta["transitions"],
        "keys": table.meta["keys"],
        "sources": sources,
        "since": since,
        "feedback": log_stats,
        "model": model_check,
        "out": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_lines(s: dict) -> list[str]:
    window = f"since {s['since']} (unix s)" if s["since"] is not None else "all time"
    lines = [
        f"retrieval table {s['version']}: {s['transitions']:,} transitions of {s['keys']:,} history keys (K={s['k']}), "
        f"{window}, from {'; '.join(s['sources'])}",
    ]
    if s["feedback"]:
        from catalog import feedback_summary_line

        lines.append(feedback_summary_line(s["feedback"]))
    if s["model"]:
        lines.append(
            f"fits the model {s['model']['model']} (trained with table {s['model']['trained_with']})"
        )
    lines.append(f"table folder: {s['out']} (sample with --rag --retrieval {s['out']})")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = job_parser(RetrievalConfig, __doc__).parse_args(argv)

    def body() -> int:
        cfg = merge_config(RetrievalConfig, args)
        for line in summary_lines(build(cfg, cfg.out)):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

"""The run's report: what the run and its loop rounds measured, from the run folder's own logs and models.

    python -m jobs.report --run runs/latest [--repeats 16]

Writes <run>/report/: report.md (the tables), operating-curve.png, the rankers' reliability diagrams, and
report.json (every number in report.md). `make demo` and `python -m jobs.loop` write it at their end.

Sections:
- Exploration operating curve: for each policy, novelty (share of the shown clusters new to the member:
  not in their history) against satisfaction (like rate of those impressions), with 95% confidence
  intervals over members. Policies: a random novel cluster, the most frequent next cluster (shown wherever
  it is), the novelty LLM alone (its first sample, n = 1), best-of-n for n in --ns (the clusters the first n
  samples of one draw of the largest n proposed, the one the alignment model scores highest: same seeds, no
  re-sampling), best-of-n with the global-rate scorer for n in --global-rate-ns (the same samples, the
  candidate with the highest global positive rate chosen instead: the rate table of the alignment
  evaluation's global_positive_rate baseline, from the demo's aggregated feedback and its training split;
  what the alignment model has to beat at equal novelty), the oracle (the simulator's own best novel
  cluster, judged by the item the slate shows from it: the ceiling), and best-of-n of each
  loop round (its own draw, scored by that round's alignment model). Each member gets one explore slot in
  a slate of 10 from each policy; the simulator answers --repeats times. The answered impressions are kept
  under report/curve/<policy>/ (FEEDBACK_LOG parts), so every point can be recomputed from them. Best-of-n
  with the alignment model and with the global-rate scorer are also compared member by member (`paired`:
  the mean of each member's difference, with its interval).
- Exploration traffic through the endpoint, per loop round: what the members answered.
- Alignment: held-out AUC and logloss per round against its baselines.
- Ranker: per-task AUC, calibration (ECE, O/E) and the reliability diagram of the demo's feedback ranker;
  per loop round, incremental training against a cold retrain on all feedback so far (held-out metrics,
  training time, and both models on the next round's traffic); the ablation table when
  `python -m jobs.ablate_ranker --out <run>/ablation ...` was run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main

SLATE_SIZE = 10


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field(
        "runs/latest", description="a finished `make demo` run folder (with or without loop rounds)"
    )
    repeats: int = Field(
        16,
        ge=1,
        description="simulator answers per member and policy on the operating curve (at 4, a 0.013 gap "
        "between two policies on the demo was answer noise; 16 shrinks it by half)",
    )
    ns: list[int] = Field(
        [1, 2, 4, 8, 16, 32], description="best-of-n sizes on the operating curve (1: the novelty LLM alone)"
    )
    global_rate_ns: list[int] = Field(
        [32],
        description="best-of-n sizes also run with the global-rate scorer instead of the alignment model "
        "(the baseline policy; [] for none)",
    )
    seed: int = Field(0, description="seed of the slates and the simulator's answers")
    replay_top: int = Field(
        3, ge=1, description="replay evaluation: the contribution rate of a ranker's first N slots"
    )
    online_repeats: int = Field(
        10, ge=1, description="replay evaluation: simulator answers per ranker's slates online"
    )


def _ci(x: np.ndarray) -> float:
    """Half-width of the normal 95% interval of the mean of x (one value per member)."""
    return float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _per_member(log: pa.Table, histories: dict[int, list[int]]) -> dict:
    """A policy's explore impressions per member: novelty share, like rate of the new clusters (NaN for a
    member shown none) and of all shown (a member's answers to repeated showings averaged)."""
    explore = log.filter(pc.equal(log["source"], "explore"))
    member = explore["member_id"].to_numpy()
    cluster = explore["cluster_id"].to_numpy()
    like = explore["like"].to_numpy(zero_copy_only=False).astype(float)
    novel = np.array([c not in set(histories[int(m)]) for m, c in zip(member, cluster, strict=True)], float)
    ids, inv = np.unique(member, return_inverse=True)
    counts, novel_counts = np.bincount(inv), np.bincount(inv, novel)
    with np.errstate(invalid="ignore", divide="ignore"):
        novel_like = np.bincount(inv, like * novel) / novel_counts  # NaN where no new cluster was shown
    return {"ids": ids, "novelty": novel_counts / counts, "like_novel": novel_like,
            "like": np.bincount(inv, like) / counts,
            "impressions": (member, novel, like)}  # fmt: skip


def curve_point(log: pa.Table, histories: dict[int, list[int]]) -> dict:
    """Novelty and like rate of a policy's explore impressions, each with its 95% interval over members
    (a member's answers to repeated showings are averaged first: members are the independent units)."""
    pm = _per_member(log, histories)
    member, novel, like = pm["impressions"]
    has_novel = ~np.isnan(pm["like_novel"])
    return {
        "members": len(pm["ids"]),
        "impressions": int(len(member)),
        "novelty": float(novel.mean()) if len(member) else float("nan"),
        "novelty_ci": _ci(pm["novelty"]),
        "novel_impressions": int(novel.sum()),
        "like_novel": float((like * novel).sum() / novel.sum()) if novel.sum() else float("nan"),
        "like_novel_ci": _ci(pm["like_novel"][has_novel]),
        "like": float(like.mean()) if len(member) else float("nan"),
        "like_ci": _ci(pm["like"]),
    }


def paired_difference(a: pa.Table, b: pa.Table, histories: dict[int, list[int]]) -> dict:
    """Policy a minus policy b on the same members, member by member: the difference in novelty (over the
    members both showed), and in the like rate of the new clusters (over the members both showed a new
    cluster), each with its 95% interval over members. Pairing removes what differs between members (their
    appetite), which two separate intervals both carry, so it tells a small gap from noise."""
    pa_, pb = _per_member(a, histories), _per_member(b, histories)
    common, ia, ib = np.intersect1d(pa_["ids"], pb["ids"], return_indices=True)
    novelty = pa_["novelty"][ia] - pb["novelty"][ib]
    like = pa_["like_novel"][ia] - pb["like_novel"][ib]
    like = like[~np.isnan(like)]
    return {
        "members": len(common),
        "novelty_diff": float(novelty.mean()) if len(novelty) else float("nan"),
        "novelty_diff_ci": _ci(novelty),
        "like_novel_members": len(like),
        "like_novel_diff": float(like.mean()) if len(like) else float("nan"),
        "like_novel_diff_ci": _ci(like),
    }


def best_of_n_lists(
    table: pa.Table, n: int, *, source: str, rates: np.ndarray | None = None
) -> dict[tuple, list[int]]:
    """history key -> the clusters the first n samples of the key's draw proposed, best alignment score
    first (n = 1: the first sample alone, unscored). With `rates` ((M,) per cluster id), best rate first
    instead: the same samples under the global-rate scorer (ties keep the candidates' order: most sampled
    first)."""
    if rates is not None:
        rates = np.asarray(rates, np.float64)
    from explore import KeyCandidates

    out = {}
    for row in table.select(
        ["history_key", "candidates", "scores", "samples", "sample_logprobs"]
    ).to_pylist():
        if row["samples"] is None or len(row["samples"]) < n:
            raise ValueError(
                f"{source}: key {row['history_key']} has {len(row['samples'] or [])} samples in draw order, "
                f"the curve needs {n}; rerun jobs.best_of_n with --n {n} (or `make demo`)."
            )
        if rates is not None:
            bad = [c for c in row["candidates"] if not 0 <= c < len(rates)]
            if bad:
                raise ValueError(
                    f"{source}: key {row['history_key']} has candidate(s) {bad[:5]} outside the rate table's "
                    f"{len(rates)} clusters; score it with the rates of this catalog's aggregated feedback."
                )
            score = {c: float(rates[c]) for c in row["candidates"]}
        else:
            score = dict(zip(row["candidates"], row["scores"], strict=True))
        kc = KeyCandidates(tuple(row["history_key"]), samples=row["samples"],
                           sample_logprobs=row["sample_logprobs"]).first(n)  # fmt: skip
        ranked = kc.candidates if n == 1 else sorted(kc.candidates, key=lambda c: -score[c])
        out[tuple(row["history_key"])] = ranked
    return out


def global_rate_scorer(alignment_dir: Path, n_clusters: int) -> np.ndarray:
    """(M,) the global-rate scorer: each cluster's impression-weighted mean label over the training pairs of
    the alignment job in `alignment_dir` (its pairs.parquet, split as its model's config split it), the
    global_positive_rate baseline of its evaluation."""
    from alignment import read_alignment_info, training_global_rate
    from catalog import read_table, schemas

    pairs_path = alignment_dir / "pairs.parquet"
    if not pairs_path.is_file():
        raise FileNotFoundError(
            f"{pairs_path}: no aggregated feedback for the global-rate scorer; run jobs.train_alignment with "
            f"--out {alignment_dir} (the demo does), or set global_rate_ns: [] in a --config file to leave the policy out."
        )
    model = alignment_dir / "model"
    config = read_alignment_info(model).config if model.is_dir() else {}
    return training_global_rate(
        read_table(pairs_path, schemas.FEEDBACK_PAIRS), n_clusters,
        eval_fraction=config.get("eval_fraction", 0.2), seed=config.get("seed", 0),
    )  # fmt: skip


def operating_curve(
    catalog,
    simulator,
    tables: dict[str, pa.Table],
    out: Path,
    cfg: ReportConfig,
    rates: np.ndarray | None = None,
) -> dict:
    """The curve's points (see the module docstring); `tables`: BEST_OF_N tables, the demo's first ("demo")
    then each loop round's; `rates`: the global-rate scorer's (M,) table (global_rate_scorer), needed when
    cfg.global_rate_ns is not empty. Each point's answered impressions go to out/<policy>/."""
    from catalog import FeedbackLogWriter
    from sim import (
        MostFrequentNextCluster,
        OracleNovelCluster,
        RandomNovelCluster,
        RankedListPolicy,
        build_impressions,
    )

    k = catalog.history_k
    histories = dict(zip(*(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True))
    sampled = {tuple(h) for h in tables["demo"]["history_key"].to_pylist()}
    members = sorted(m for m, h in histories.items() if len(h) >= k and tuple(h[-k:]) in sampled)

    def ranked(lists: dict[tuple, list[int]]):
        return RankedListPolicy(
            {m: lists.get(tuple(histories[m][-k:]), []) for m in members}, novel_only=False
        )

    policies = {"random": RandomNovelCluster(catalog.n_clusters),
                "most-frequent": MostFrequentNextCluster(catalog.histories, novel_only=False)}  # fmt: skip
    for n in cfg.ns:
        name = "novelty LLM (n=1)" if n == 1 else f"best-of-{n}"
        policies[name] = ranked(best_of_n_lists(tables["demo"], n, source="the demo's best-of-n table"))
    for n in cfg.global_rate_ns:
        if rates is None:
            raise ValueError(
                "operating_curve: global_rate_ns is set but no rates were given (global_rate_scorer)."
            )
        policies[f"best-of-{n}, global-rate scorer"] = ranked(
            best_of_n_lists(tables["demo"], n, source="the demo's best-of-n table", rates=rates)
        )
    policies["oracle"] = OracleNovelCluster(simulator, catalog)
    for name, table in tables.items():
        if name != "demo":
            n = max(cfg.ns)
            policies[f"best-of-{n}, {name}"] = ranked(best_of_n_lists(table, n, source=name))
    points, logs = {}, {}
    for name, policy in policies.items():
        slates = build_impressions(catalog, policy, member_ids=members, slate_size=SLATE_SIZE, explore_slots=1,
                                   seed=cfg.seed)  # fmt: skip
        log = pa.concat_tables([simulator.respond(slates) for _ in range(cfg.repeats)])
        folder = out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace(
            "=", ""
        )
        if folder.exists():
            shutil.rmtree(folder)
        FeedbackLogWriter(folder).append(log)
        points[name] = {**curve_point(log, histories), "log": folder.name}
        logs[name] = log
    # the alignment model against the global-rate scorer on the same samples, member by member
    paired = {
        f"best-of-{n} minus best-of-{n}, global-rate scorer": paired_difference(
            logs[f"best-of-{n}"], logs[f"best-of-{n}, global-rate scorer"], histories
        )
        for n in cfg.global_rate_ns
        if f"best-of-{n}" in logs
    }
    return {"members": len(members), "repeats": cfg.repeats, "slate_size": SLATE_SIZE, "points": points,
            "paired": paired}  # fmt: skip


def _contribution(t: pa.Table) -> np.ndarray:
    """LinkedIn's 'contribution': an engagement that adds to the feed (here a like or a share)."""
    return (t["like"].to_numpy(zero_copy_only=False) | t["share"].to_numpy(zero_copy_only=False)).astype(
        float
    )


def _orders(scores: np.ndarray, requests: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each row's 0-based rank within its request under `scores` (best first, ties to the smaller item id)."""
    order = np.lexsort((items, -scores, requests))
    rank = np.empty(len(order), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(requests[order])) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    rank[order] = np.arange(len(order)) - np.repeat(starts, sizes)
    return rank


def replay_rates(log: pa.Table, ranks: np.ndarray, top: int) -> dict:
    """The offline replay estimate (Li et al. 2011, as LiRank 5.1 uses it) of a ranker's contribution rate in
    its first `top` positions, from shuffled traffic alone: a logged item counts where the shuffle happened
    to put it at the position this ranker gives it (each position is a uniform draw, so these matches are an
    unbiased sample of what the ranker's slate would get). 95% interval: normal, over the matches."""
    position = log["position"].to_numpy()
    match = (ranks == position) & (position < top)
    y = _contribution(log)[match]
    n = int(match.sum())
    rate = float(y.mean()) if n else float("nan")
    return {
        "matches": n,
        "rate": rate,
        "ci": float(1.96 * np.sqrt(rate * (1 - rate) / n)) if n > 1 else float("nan"),
    }


def _under(run: Path, path: str) -> str:
    """`path` relative to the run folder when it lies inside it (a moved run keeps its old absolute paths)."""
    p = Path(path)
    return str(p.relative_to(run)) if p.is_relative_to(run) else str(p)


def replay_evaluation(catalog, simulator, run: Path, s: dict, cfg: ReportConfig) -> dict | None:
    """LiRank's replay check for loop round s: each ranker's contribution rate in the first --replay-top
    positions estimated offline from the round's shuffled traffic (round-NN/replay/), next to the rate the
    simulator gives the same ranker online (its order of the same slates, answered --online-repeats times)."""
    from catalog import read_feedback_log
    from ranking import Ranker, feedback_features

    folder = run / "loop" / f"round-{s['round']:02d}"
    if not (folder / "replay").is_dir():
        return None
    log = read_feedback_log(folder / "replay").sort_by(
        [("request_id", "ascending"), ("position", "ascending")]
    )
    requests = np.unique(log["request_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    items = log["item_id"].to_numpy()
    at_top = log.set_column(
        log.schema.get_field_index("position"), "position", pa.array(np.zeros(log.num_rows, np.int32))
    )  # fmt: skip  (scored as served: at slot 0)
    features = feedback_features(at_top, catalog)
    n_ratings = dict(zip(*(catalog.items[c].to_pylist() for c in ("item_id", "n_ratings")), strict=True))
    rankers = {"served (shuffled)": None, f"serving ({_under(run, s['served_by']['ranker'])})": s["served_by"]["ranker"],
               f"round {s['round']} incremental": folder / "ranker", f"round {s['round']} cold": folder / "ranker-cold",
               "popularity": "popularity", "random": "random"}  # fmt: skip
    rng = np.random.default_rng(cfg.seed + 5)
    out = {}
    for name, source in rankers.items():
        if source is None:
            ranks = log["position"].to_numpy().astype(np.int64)
        elif source == "popularity":
            ranks = _orders(np.array([n_ratings[int(i)] for i in items], float), requests, items)
        elif source == "random":
            ranks = _orders(rng.random(len(items)), requests, items)
        elif Path(source).is_dir():
            ranks = _orders(Ranker.load(source).score(features)["score"].astype(float), requests, items)
        else:
            continue
        offline = replay_rates(log, ranks, cfg.replay_top)
        slates = log.set_column(
            log.schema.get_field_index("position"), "position", pa.array(ranks.astype(np.int32))
        )
        answers = [simulator.respond(slates) for _ in range(cfg.online_repeats)]
        top = ranks < cfg.replay_top
        per_request = np.mean([np.bincount(requests[top], _contribution(a)[top]) for a in answers], 0)
        per_request = per_request / np.maximum(np.bincount(requests[top]), 1)
        out[name] = {"offline": offline,
                     "online": {"rate": float(np.mean([_contribution(a)[top].mean() for a in answers])),
                                "ci": _ci(per_request), "requests": int(requests.max() + 1)}}  # fmt: skip
    return {"round": s["round"], "requests": int(requests.max() + 1), "top": cfg.replay_top, "rankers": out}


def plot_curve(curve: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = curve["points"]
    fig, ax = plt.subplots(figsize=(6.5, 4.8), dpi=120)
    bon = [n for n in pts if n.startswith("best-of-") and "," not in n]  # the alignment-scored line
    line = ["novelty LLM (n=1)", *bon] if "novelty LLM (n=1)" in pts else bon
    ax.plot(
        [pts[n]["novelty"] for n in line],
        [pts[n]["like_novel"] for n in line],
        color="tab:blue",
        lw=1,
        zorder=1,
    )
    for name, p in pts.items():
        color = ("tab:blue" if name in line else "tab:green" if "round" in name
                 else "tab:orange" if "global-rate" in name else "black" if name == "oracle"
                 else "tab:grey")  # fmt: skip
        ax.errorbar(p["novelty"], p["like_novel"], xerr=p["novelty_ci"], yerr=p["like_novel_ci"], fmt="o", ms=4,
                    color=color, capsize=2)  # fmt: skip
        ax.annotate(
            name, (p["novelty"], p["like_novel"]), fontsize=6, xytext=(4, 3), textcoords="offset points"
        )
    ax.set_xlabel("novelty: share of shown clusters new to the member")
    ax.set_ylabel("satisfaction: like rate of the new clusters shown")
    ax.set_title(f"Exploration operating curve ({curve['members']} members x {curve['repeats']} answers, 95% CI)",
                 fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _rounds(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "loop").glob("round-*/summary.json"))]


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]  # fmt: skip


def build_report(cfg: ReportConfig) -> dict:
    """Compute every section; returns report.json's content (also written, with report.md and the PNGs)."""
    from catalog import Catalog, read_table, schemas
    from sim import MemberSimulator, SimConfig

    run = Path(cfg.run).resolve()
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"--run {cfg.run}: no summary.json; run `make demo` first.")
    summary = json.loads(summary_path.read_text())
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load(run / "catalog")
    rounds = _rounds(run)
    tables = {"demo": read_table(run / "best-of-n" / "selected", schemas.BEST_OF_N)}
    for s in rounds:
        tables[f"round {s['round']}"] = read_table(
            run / "loop" / f"round-{s['round']:02d}" / "best-of-n" / "selected", schemas.BEST_OF_N
        )
    simulator = MemberSimulator.for_catalog(catalog, SimConfig(seed=cfg.seed + 11))
    rates = global_rate_scorer(run / "alignment", catalog.n_clusters) if cfg.global_rate_ns else None
    curve = operating_curve(catalog, simulator, tables, out / "curve", cfg, rates)
    plot_curve(curve, out / "operating-curve.png")

    alignment = [{"round": 0, "warm_start": None, **_alignment_row(summary["alignment"]["model"]["evaluation"]),
                  "steps": summary["alignment"]["model"]["steps"],
                  "objective": summary["alignment"]["model"].get("objective")}]  # fmt: skip
    for s in rounds:
        alignment.append({"round": s["round"], "warm_start": s["alignment"]["warm_start"],
                          **_alignment_row(s["alignment"]["evaluation"]), "steps": s["alignment"]["steps"],
                          "objective": "pointwise"})  # fmt: skip
    objectives = []
    for folder in (run / "alignment", run / "alignment-pairwise"):
        if (folder / "summary.json").is_file():
            m = json.loads((folder / "summary.json").read_text())["model"]
            objectives.append({"folder": folder.name, "objective": m.get("objective"), "steps": m["steps"],
                               "examples_seen": m["examples_seen"], "train_s": m["train_s"],
                               **_alignment_row(m["evaluation"])})  # fmt: skip
    ranker_dir = run / "ranker" / "feedback"
    ranker_metrics = json.loads((ranker_dir / "metrics.json").read_text())
    if (ranker_dir / "reliability.png").is_file():
        shutil.copyfile(ranker_dir / "reliability.png", out / "ranker-reliability.png")
    ablation = run / "ablation" / "ablation.md"
    replay = [r for r in (replay_evaluation(catalog, simulator, run, s, cfg) for s in rounds) if r]
    report = {
        "run": str(run),
        "operating_curve": curve,
        "traffic": [
            {
                "round": s["round"],
                "served_by": s["served_by"],
                "slates": s["slates"],
                "explore": s["rates"]["explore"],
                "latency_ms": s["latency_ms"],
            }
            for s in rounds
        ],  # fmt: skip
        "alignment": alignment,
        "alignment_objectives": objectives,
        "ranker": {
            "tasks": ranker_metrics["tasks"],
            "popularity_baseline": ranker_metrics["popularity_baseline"],
            "rounds": [
                {
                    "round": s["round"],
                    **s["ranker"],
                    "cold": s.get("ranker_cold"),
                    # the round's models on the next round's traffic (kept in that round's summary)
                    "next_round": nxt.get("previous_rankers_on_this_traffic") if nxt else None,
                }
                for s, nxt in zip(rounds, [*rounds[1:], None], strict=True)
            ],
            "ablation": str(ablation) if ablation.is_file() else None,
        },
        "replay": replay,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text("\n".join(markdown(report, ablation)) + "\n")
    return report


def _alignment_row(ev: dict) -> dict:
    """One alignment evaluation's figures; evaluations written before the key_offset baseline existed give
    None for it (shown as n/a)."""
    freq, key = ev.get("novelty_sample_frequency") or {}, ev.get("key_offset") or {}
    return {"heldout_pairs": ev["heldout_pairs"], "auc": ev["model"]["auc"], "logloss": ev["model"]["logloss"],
            "key_auc": ev["model"].get("key_auc"),
            "global_rate_auc": ev["global_positive_rate"]["auc"],
            "global_rate_logloss": ev["global_positive_rate"]["logloss"],
            "global_rate_key_auc": ev["global_positive_rate"].get("key_auc"),
            "key_offset_auc": key.get("auc"), "key_offset_logloss": key.get("logloss"),
            "frequency_auc": freq.get("auc"), "frequency_logloss": freq.get("logloss"),
            "best_baseline": ev.get("best_baseline")}  # fmt: skip


def markdown(report: dict, ablation: Path) -> list[str]:
    curve = report["operating_curve"]
    lines = [f"# Run report: {Path(report['run']).name}", "",
             "Every number here is computed from this run folder's logs and models by `python -m jobs.report "
             f"--run {report['run']}` (report.json holds them all).", "",
             "## Exploration operating curve", "",
             f"{curve['members']} members with a sampled history key; each policy fills one explore slot of a "
             f"{curve['slate_size']}-item slate, the simulator answers {curve['repeats']} times; 95% intervals "
             "over members. Novelty: share of the shown clusters not in the member's history; satisfaction: the "
             "like rate of those new clusters (what the endpoint shows: the cache's lookup drops clusters the "
             "member has seen), next to the like rate of all shown. Best-of-n for "
             "smaller n takes the first n samples of the largest draw (same seeds). The answered impressions: "
             "report/curve/<policy>/.", "", "![operating curve](operating-curve.png)", ""]  # fmt: skip
    lines += _table(
        [
            "policy",
            "novelty",
            "like rate of the new clusters",
            "like rate of all shown",
            "members",
            "impressions",
        ],
        [
            [
                name,
                f"{_f(p['novelty'], 3)} ± {_f(p['novelty_ci'], 3)}",
                f"{_f(p['like_novel'], 3)} ± {_f(p['like_novel_ci'], 3)}",
                f"{_f(p['like'], 3)} ± {_f(p['like_ci'], 3)}",
                p["members"],
                p["impressions"],
            ]
            for name, p in curve["points"].items()
        ],  # fmt: skip
    )
    if curve.get("paired"):
        lines += ["", "Paired over members (the same members and samples; a policy minus the global-rate scorer's; "
                  "95% intervals of the mean difference):", ""]  # fmt: skip
        lines += _table(
            ["comparison", "novelty", "like rate of the new clusters", "members (with new clusters in both)"],
            [
                [
                    name,
                    f"{_f(d['novelty_diff'], 3)} ± {_f(d['novelty_diff_ci'], 3)}",
                    f"{_f(d['like_novel_diff'], 3)} ± {_f(d['like_novel_diff_ci'], 3)}",
                    f"{d['members']} ({d['like_novel_members']})",
                ]
                for name, d in curve["paired"].items()
            ],  # fmt: skip
        )
    lines += ["", "## Exploration traffic through the endpoint, per loop round", ""]
    if report["traffic"]:
        lines += _table(
            [
                "round",
                "served by cache version",
                "slates",
                "explore impressions",
                "click",
                "like",
                "p50 ms",
                "p99 ms",
            ],
            [
                [
                    t["round"],
                    t["served_by"]["cache_version"],
                    t["slates"],
                    t["explore"]["impressions"],
                    _f(t["explore"]["click"], 3),
                    _f(t["explore"]["like"], 3),
                    _f(t["latency_ms"]["p50"], 1),
                    _f(t["latency_ms"]["p99"], 1),
                ]
                for t in report["traffic"]
            ],  # fmt: skip
        )
    else:
        lines.append(f"No loop round yet: `python -m jobs.loop --run {report['run']}`.")
    lines += ["", "## Alignment model: held-out AUC and logloss per round", "",
              "Round 0 is the demo's model; each loop round warm-starts from the previous one and trains on all "
              "explore feedback so far (one held-out split for every round).", ""]  # fmt: skip
    lines += _table(
        [
            "round",
            "steps",
            "held-out pairs",
            "AUC",
            "global rate AUC",
            "key offset AUC",
            "sample frequency AUC",
            "logloss",
            "global rate logloss",
            "key offset logloss",
            "within-key AUC",
            "global rate within-key AUC",
        ],
        [
            [
                a["round"],
                a["steps"],
                a["heldout_pairs"],
                _f(a["auc"]),
                _f(a["global_rate_auc"]),
                _f(a.get("key_offset_auc")),
                _f(a["frequency_auc"]),
                _f(a["logloss"]),
                _f(a["global_rate_logloss"]),
                _f(a.get("key_offset_logloss")),
                _f(a.get("key_auc")),
                _f(a.get("global_rate_key_auc")),
            ]
            for a in report["alignment"]
        ],  # fmt: skip
    )
    lines += ["", "Key offset: the global rate plus one fitted logit offset per history key (alignment.evaluate); "
              "within-key AUC: the AUC among each key's own candidates, averaged over keys (what best-of-n "
              "selection uses: a key-level offset moves the AUC, not this)."]  # fmt: skip
    lines += ["", "Pointwise against pairwise (the same pairs, split, steps and base; the pairwise model is scored "
              "by its logit, so its logloss is not a calibrated one):", ""]  # fmt: skip
    if len(report["alignment_objectives"]) > 1:
        lines += _table(
            ["model", "objective", "steps", "examples", "train s", "AUC", "logloss"],
            [
                [
                    o["folder"],
                    o["objective"],
                    o["steps"],
                    o["examples_seen"],
                    _f(o["train_s"], 1),
                    _f(o["auc"]),
                    _f(o["logloss"]),
                ]
                for o in report["alignment_objectives"]
            ],  # fmt: skip
        )
    else:
        run = report["run"]
        lines.append(
            f"not in this run: `python -m jobs.train_alignment --catalog {run}/catalog --logs {run}/logs/explore "
            f"--candidates {run}/candidates/candidates --base {run}/novelty --method full --objective pairwise "
            f"--max-steps 300 --out {run}/alignment-pairwise`, then `python -m jobs.report --run {run}`."
        )
    rk = report["ranker"]
    lines += ["", "## Ranker", "", "The demo's multi-task ranker on its held-out feedback (popularity: the "
              "item's training-set rate).", "", "![reliability](ranker-reliability.png)", ""]  # fmt: skip
    lines += _table(
        ["task", "AUC", "popularity AUC", "logloss", "ECE", "O/E", "positive rate", "n"],
        [
            [
                t,
                _f(m["auc"]),
                _f(rk["popularity_baseline"].get(t, {}).get("auc")),
                _f(m["logloss"]),
                _f(m["ece"]),
                _f(m["oe"], 3),
                _f(m["positive_rate"], 3),
                m["n"],
            ]
            for t, m in rk["tasks"].items()
        ],  # fmt: skip
    )
    if rk["rounds"]:
        lines += ["", "Incremental training per round (warm start, Fisher prior, this round's feedback only) "
                  "against a cold retrain on all feedback so far; 'next round' is each model on the traffic of "
                  "the round after it (neither trained on it).", ""]  # fmt: skip
        rows = []
        for r in rk["rounds"]:
            cold, nxt = r.get("cold") or {}, r.get("next_round") or {}
            rows.append([r["round"], _f(r["auc"].get("click")), _f((cold.get("auc") or {}).get("click")),
                         _f(r["train_s"], 1), _f(cold.get("train_s"), 1),
                         _f((nxt.get("incremental") or {}).get("click")), _f((nxt.get("cold") or {}).get("click"))])  # fmt: skip
        lines += _table(["round", "click AUC incremental", "click AUC cold", "train s incremental", "train s cold",
                         "incremental on next round", "cold on next round"], rows)  # fmt: skip
    if ablation.is_file():
        lines += ["", "### Ablation (LiRank Table 6 order, on all feedback logs so far)", "",
                  ablation.read_text().strip()]  # fmt: skip
    else:
        lines += ["", f"Ablation table: `python -m jobs.loop --run {report['run']} --rounds 1` (its --comparisons) "
                  f"or `python -m jobs.ablate_ranker --dataset feedback --logs {report['run']}/logs/round0/random "
                  f"--out {report['run']}/ablation`, then this report again."]  # fmt: skip
    lines += ["", "## Replay evaluation (LiRank 5.1)", ""]
    if report["replay"]:
        lines += ["Each round also served its members in a pseudo-random order (`order: shuffled`, logged "
                  "`shuffled=true`, round-NN/replay/). From those logs alone, each ranker's contribution rate "
                  "(like or share) in its first slots is estimated by replay: a logged item counts where the "
                  "shuffle put it at the slot this ranker gives it. Online: the simulator answers the same slates "
                  "in the ranker's own order.", ""]  # fmt: skip
        for rep in report["replay"]:
            lines += [f"Round {rep['round']}: {rep['requests']} shuffled slates, contribution rate of the first "
                      f"{rep['top']} slots.", ""]  # fmt: skip
            lines += _table(
                ["ranker", "offline replay estimate", "matches", "online (simulator)"],
                [
                    [
                        name,
                        f"{_f(v['offline']['rate'], 3)} ± {_f(v['offline']['ci'], 3)}",
                        v["offline"]["matches"],
                        f"{_f(v['online']['rate'], 3)} ± {_f(v['online']['ci'], 3)}",
                    ]
                    for name, v in rep["rankers"].items()
                ],  # fmt: skip
            )
            lines.append("")
    else:
        lines.append("No replay traffic in this run: `python -m jobs.loop --run ... --replay` (the default).")
    return lines


def summary_lines(report: dict) -> list[str]:
    """The terminal summary: the curve's points, then where the report is."""
    curve = report["operating_curve"]
    lines = [
        f"operating curve ({curve['members']} members x {curve['repeats']} answers, 95% CI over members):"
    ]
    for name, p in curve["points"].items():
        lines.append(
            f"  {name:<30} novelty {p['novelty']:.3f} ± {p['novelty_ci']:.3f}, like rate of the new clusters "
            f"{p['like_novel']:.3f} ± {p['like_novel_ci']:.3f} (all shown {p['like']:.3f})"
        )
    for name, d in curve.get("paired", {}).items():
        lines.append(
            f"  paired, {name}: novelty {d['novelty_diff']:+.3f} ± {d['novelty_diff_ci']:.3f}, like rate of the new "
            f"clusters {d['like_novel_diff']:+.3f} ± {d['like_novel_diff_ci']:.3f} ({d['like_novel_members']} members)"
        )
    for a in report["alignment"][1:]:
        lines.append(
            f"alignment round {a['round']}: held-out AUC {_f(a['auc'])} vs global rate {_f(a['global_rate_auc'])}"
        )
    for r in report["ranker"]["rounds"]:
        cold = r.get("cold") or {}
        lines.append(
            f"ranker round {r['round']}: incremental click AUC {_f(r['auc'].get('click'))} in {_f(r['train_s'], 1)}s"
            + (f", cold {_f(cold['auc'].get('click'))} in {_f(cold['train_s'], 1)}s" if cold else "")
        )
    for rep in report["replay"]:
        lines.append(f"replay, round {rep['round']} (contribution rate of the first {rep['top']} slots, offline "
                     "estimate vs online):")  # fmt: skip
        for name, v in rep["rankers"].items():
            lines.append(f"  {name:<26} {_f(v['offline']['rate'], 3)} ± {_f(v['offline']['ci'], 3)} "
                         f"({v['offline']['matches']} matches) vs {_f(v['online']['rate'], 3)} ± {_f(v['online']['ci'], 3)}")  # fmt: skip
    lines.append(f"report: {Path(report['run']) / 'report' / 'report.md'}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = job_parser(ReportConfig, __doc__).parse_args(argv)

    def body() -> int:
        cfg = merge_config(ReportConfig, args)
        for line in summary_lines(build_report(cfg)):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

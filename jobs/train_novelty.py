"""Fine-tune the novelty LLM on members' real cluster transitions, then evaluate it with vLLM.

    python -m jobs.train_novelty --catalog runs/<demo>/catalog --out runs/novelty            # tiny preset
    python -m jobs.train_novelty --catalog DIR --base smollm2-135m --max-steps 200 --out runs/nov-smol
    python -m jobs.train_novelty --catalog DIR --base /models/my-causal-lm --out runs/nov-mine  # LoRA
    python -m jobs.train_novelty --catalog DIR --rag --out runs/nov-rag   # retrieval-augmented prompts
    python -m jobs.train_novelty --catalog DIR --out runs/novelty --evaluate-only --eval-decoding top
                                                  # re-evaluate a trained model at another decoding

With --rag each prompt also lists the --rag-top clusters that training members most often moved to next
from the key (explore.retrieval); the table is saved in the folder (retrieval.parquet, retrieval.json)
and refreshed from fresh logs by `python -m jobs.build_retrieval` without retraining. Such a model is
sampled with --rag; one trained without it is refused with --rag.

Outputs in --out: a plain Hugging Face folder vLLM loads (config.json, model.safetensors, tokenizer) and
novelty.json (prompt format, cluster names, training report, evaluation). The evaluation on held-out
members prints format validity of free generations, recall@n of the true next novel cluster against
frequency and random baselines, and novelty (share of samples outside the history). The folder is
built beside --out and swapped in whole; an --out that holds files but no novelty.json (not an earlier
novelty model) is refused before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main


class NoveltyTrainFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str = Field(description="catalog folder (python -m jobs.build_catalog --out DIR)")
    base: str = Field("tiny", description="tiny, smollm2-135m, or a local Hugging Face causal-LM folder")
    epochs: float = Field(3.0, gt=0, description="passes over the examples")
    max_steps: int = Field(0, ge=0, description="stop after N optimizer steps (0: epochs decide)")
    batch_size: int = Field(32, ge=1, description="examples per step")
    lr: float = Field(
        0.0, ge=0, description="learning rate (0: 3e-3 full training of tiny, 1e-3 with --rag, 2e-4 LoRA)"
    )
    lora_r: int = Field(
        16, ge=1, description="LoRA rank for pretrained bases (alpha and dropout keep their defaults)"
    )
    max_per_key: int = Field(48, ge=0, description="cap on examples per history key (0: none)")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of members held out")
    evaluate: bool = Field(
        True, description="evaluate with vLLM on the held-out members (--no-evaluate: skip)"
    )
    eval_n: int = Field(20, ge=1, description="samples per key for recall@n")
    eval_temperature: float = Field(
        1.5, gt=0, le=2, description="sampling temperature of the evaluation (at most 2)"
    )
    eval_top_k: int = Field(
        0,
        ge=0,
        description="top-k of the evaluation's constrained samples, as the bulk jobs' --top-k (0: all)",
    )
    eval_decoding: Literal["sample", "top", "distinct"] = Field(
        "sample",
        description="decoding of the evaluation's candidates, as the bulk jobs' --decoding (sample: n draws "
        "with replacement; top: the n most likely names; distinct: n names drawn without replacement)",
    )
    eval_examples: int = Field(1000, ge=1, description="held-out transitions evaluated")
    eval_exact: bool = Field(
        False,
        description="also rank every cluster name by the model's exact probability (one transformers forward "
        "per key and name; slow for large models) and report the recall of its top-m beside the table's",
    )
    evaluate_only: bool = Field(
        False,
        description="no training: evaluate the model already in --out at these --eval-* settings on its own "
        "held-out members; the new evaluation becomes the recorded one (the earlier is kept)",
    )
    seed: int = Field(0, description="seed of the split, the initialisation and the sampling")
    rag: bool = Field(
        False, description="retrieval augmentation: prompts list the key's most frequent next clusters"
    )
    rag_top: int = Field(10, ge=1, description="with --rag: retrieved clusters listed in each prompt")


class NoveltyTrainConfig(NoveltyTrainFields):
    out: str = Field("runs/novelty", description="model folder to write")


def train(cfg: NoveltyTrainFields, out: str | Path, *, progress: bool = True) -> dict:
    """Train (and evaluate) one novelty model; returns the report saved in novelty.json. An `out` that
    holds files but no novelty model (novelty.json) is refused before any work: the job replaces it."""
    from catalog import Catalog, ClusterVocabulary, check_output_folder
    from explore import (
        ExampleConfig,
        NoveltyModelInfo,
        SFTConfig,
        read_model_info,
        train_novelty,
    )
    from lm import LoraSettings

    if cfg.eval_decoding != "sample" and cfg.eval_top_k:
        raise ValueError(
            f"--eval-top-k {cfg.eval_top_k} truncates sampled tokens; --eval-decoding {cfg.eval_decoding} "
            "ranks whole names and has no top-k: drop one of the two."
        )
    if cfg.evaluate_only:
        if not cfg.evaluate:
            raise ValueError("--evaluate-only evaluates, which --no-evaluate skips: drop one of the two.")
        return reevaluate(cfg, out)
    if cfg.eval_exact and not cfg.evaluate:
        raise ValueError(
            "--eval-exact is part of the evaluation, which --no-evaluate skips: drop one of the two."
        )
    check_output_folder(out, (NoveltyModelInfo.FILE,), job="jobs.train_novelty", what="novelty model")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    examples = ExampleConfig(
        k=catalog.history_k, max_per_key=cfg.max_per_key, eval_fraction=cfg.eval_fraction, seed=cfg.seed
    )
    sft = SFTConfig(
        base=cfg.base,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lora=LoraSettings(r=cfg.lora_r),
        seed=cfg.seed,
        rag_top=cfg.rag_top if cfg.rag else 0,
    )
    report = train_novelty(vocab, catalog.histories, out, sft, examples, progress=progress)
    if cfg.evaluate:
        report["evaluation"] = _evaluate(cfg, out, catalog, vocab, examples, rag=cfg.rag)
        read_model_info(out).with_report(report).write(out)  # the evaluation joins the saved report
    return report


def _evaluate(cfg: NoveltyTrainFields, out, catalog, vocab, examples, *, rag: bool) -> dict:
    from explore import NoveltySampler, SamplingConfig, build_examples, evaluate_novelty

    train_ex, eval_ex, _ = build_examples(catalog.histories, examples, vocab.size)
    sampler = NoveltySampler(out, vocab=vocab, rag=rag)
    sampling = SamplingConfig(n=cfg.eval_n, temperature=cfg.eval_temperature, top_k=cfg.eval_top_k,
                              seed=cfg.seed, decoding=cfg.eval_decoding)  # fmt: skip
    try:
        return evaluate_novelty(
            sampler, eval_ex, train_ex, sampling, max_examples=cfg.eval_examples, exact=cfg.eval_exact
        )
    finally:
        sampler.close()


def reevaluate(cfg: NoveltyTrainFields, out: str | Path) -> dict:
    """--evaluate-only: evaluate the model already in `out` at the --eval-* settings, without training, on
    the held-out members of its own split (the example config recorded in its novelty.json, whatever
    --seed, --eval-fraction and --max-per-key say). The new evaluation becomes the recorded one (what the
    main job's release gates read); the one it replaces is kept in the report's earlier_evaluations."""
    from dataclasses import fields

    from catalog import Catalog, ClusterVocabulary
    from explore import ExampleConfig, read_model_info

    info = read_model_info(out)
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    if info.vocab.signature() != vocab.signature():
        raise ValueError(
            f"--evaluate-only: the model in --out {out} was trained on other clusters than --catalog {cfg.catalog}; "
            "give the catalog it was trained on."
        )
    if not info.example_config:
        raise ValueError(
            f"--evaluate-only: {Path(out) / info.FILE} records no example_config, so its held-out members are not "
            "known; retrain it with this version of jobs.train_novelty."
        )
    if cfg.rag and not info.rag:
        raise ValueError(
            f"--evaluate-only --rag: the model in --out {out} was trained without retrieval augmentation; drop "
            "--rag (a RAG model is evaluated with its retrieval table whatever --rag says)."
        )
    known = {f.name for f in fields(ExampleConfig)}
    unknown = sorted(set(info.example_config) - known)
    if unknown:
        raise ValueError(
            f"--evaluate-only: {Path(out) / info.FILE} records example_config fields {unknown} that this version "
            f"of jobs.train_novelty does not know (it knows {sorted(known)}), so it cannot rebuild the model's "
            "held-out split; evaluate it with the version that trained it, or retrain it with this one."
        )
    report = dict(info.report)
    evaluation = _evaluate(cfg, out, catalog, vocab, ExampleConfig(**info.example_config), rag=info.rag)
    earlier = [*report.get("earlier_evaluations", [])]
    if report.get("evaluation"):
        earlier.append(report["evaluation"])
    report.update(evaluation=evaluation, earlier_evaluations=earlier)
    read_model_info(out).with_report(report).write(out)
    return report


def summary_lines(report: dict) -> list[str]:
    ex = report["examples"]
    lines = [
        f"novelty model: {report['base']} ({report['method']}), {report['trainable_params']:,} trainable "
        f"parameters, prompt style {report['prompt_format']['style']}",
        f"examples: {ex['train_examples']} train (of {ex['train_transitions']} transitions, {ex['train_keys']} keys, "
        f"capped per key), {ex['eval_examples']} held-out from {ex['eval_members']} members; "
        f"{ex['too_short']} histories too short",
        f"held-out answer loss {report['heldout_loss_before']:.3f} -> {report['heldout_loss_after']:.3f} "
        f"after {report['steps']} steps ({report['examples_per_s']} examples/s, {report['train_s']:.0f}s)",
    ]
    ev = report.get("evaluation")
    if ev:
        validity = ", ".join(f"{k} {v:.1%}" for k, v in ev["validity_free"].items())
        lines += [
            f"format validity of free generations: {validity} (gate >= 90%); constrained "
            f"{ev['validity_constrained']:.0%}",
            f"recall@{ev['n']} of the next novel cluster ("
            + (
                "the model's top names"
                if ev.get("decoding") == "top"
                else f"T={ev['temperature']:g}"
                + (", without replacement" if ev.get("decoding") == "distinct" else "")
            )
            + (f", top-k {ev['top_k']}" if ev.get("top_k") else "")
            + f"): {ev['recall_at_n']:.3f} (frequency baseline "
            f"{ev['recall_frequency_baseline']:.3f}, random {ev['recall_random_baseline']:.3f}"
            + (
                f", its retrieval table {ev['recall_retrieval_baseline']:.3f}"
                if "recall_retrieval_baseline" in ev
                else ""
            )
            + f"; {ev['mean_distinct_candidates']} distinct candidates per key), novelty {ev['novelty']:.1%}, "
            f"{ev['examples']} held-out transitions",
        ]
        exact = ev.get("exact")
        if exact:
            lines.append(
                f"the model's own top names (exact probabilities, no sampling): recall {exact['recall_top_m']:.3f} "
                f"at the sampled candidates' m (frequency table {exact['recall_frequency_baseline_top_m']:.3f}), "
                f"{exact['recall_top_n']:.3f} at m = {exact['n']} (table {exact['recall_frequency_baseline_top_n']:.3f})"
            )
    rag = report.get("retrieval")
    if rag:
        lines.append(
            f"retrieval augmentation: {rag['top']} retrieved clusters per prompt, table {rag['version']} "
            f"({rag.get('transitions', 0):,} transitions of {rag.get('keys', 0):,} keys) saved with the model"
        )
    lines.append(f"model folder: {report['out']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = job_parser(NoveltyTrainConfig, __doc__).parse_args(argv)

    def body() -> int:
        cfg = merge_config(NoveltyTrainConfig, args)
        report = train(cfg, cfg.out)
        if cfg.evaluate_only:
            print(
                f"re-evaluated {cfg.out} without training; the recorded evaluation is the new one "
                f"({len(report['earlier_evaluations'])} earlier kept in its report)"
            )
        for line in summary_lines(report):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

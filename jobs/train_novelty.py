"""Fine-tune the novelty LLM on members' real cluster transitions, then evaluate it with vLLM.

    python -m jobs.train_novelty --catalog runs/<demo>/catalog --out runs/novelty            # tiny preset
    python -m jobs.train_novelty --catalog DIR --base smollm2-135m --max-steps 200 --out runs/nov-smol
    python -m jobs.train_novelty --catalog DIR --base /models/my-causal-lm --out runs/nov-mine  # LoRA

Outputs in --out: a plain Hugging Face folder vLLM loads (config.json, model.safetensors, tokenizer) and
novelty.json (prompt format, cluster names, training report, evaluation). The evaluation on held-out
members prints format validity of free generations, recall@n of the true next novel cluster against
frequency and random baselines, and novelty (share of samples outside the history). The folder is
built beside --out and swapped in whole; an --out that holds files but no novelty.json (not an earlier
novelty model) is refused before training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from jobs.common import merge_config, run_main


class NoveltyTrainFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: str  # catalog folder (python -m jobs.build_catalog)
    base: str = "tiny"  # tiny, smollm2-135m, or a local Hugging Face causal-LM folder
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(0, ge=0)  # 0: epochs decide
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.0, ge=0)  # 0: 3e-3 full (tiny), 2e-4 LoRA
    lora_r: int = Field(16, ge=1)
    max_per_key: int = Field(48, ge=0)  # cap on examples per history key; 0 = none
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # members held out
    evaluate: bool = True
    eval_n: int = Field(20, ge=1)  # samples per key for recall@n
    eval_temperature: float = Field(1.5, gt=0)
    eval_examples: int = Field(1000, ge=1)
    seed: int = 0


class NoveltyTrainConfig(NoveltyTrainFields):
    out: str = "runs/novelty"


FLAGS = [
    "out", "catalog", "base", "epochs", "max_steps", "batch_size", "lr", "lora_r", "max_per_key",
    "eval_fraction", "evaluate", "eval_n", "eval_temperature", "eval_examples", "seed",
]  # fmt: skip


def train(cfg: NoveltyTrainFields, out: str | Path, *, progress: bool = True) -> dict:
    """Train (and evaluate) one novelty model; returns the report saved in novelty.json. An `out` that
    holds files but no novelty model (novelty.json) is refused before any work: the job replaces it."""
    from catalog.build import Catalog
    from catalog.outputs import check_output_folder
    from catalog.vocabulary import ClusterVocabulary
    from explore.examples import ExampleConfig, build_examples
    from explore.model_info import INFO_FILE
    from explore.sft import SFTConfig, train_novelty

    check_output_folder(out, (INFO_FILE,), job="jobs.train_novelty", what="novelty model")
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
        lora_r=cfg.lora_r,
        seed=cfg.seed,
    )
    report = train_novelty(vocab, catalog.histories, out, sft, examples, progress=progress)
    if cfg.evaluate:
        from explore.evaluate import evaluate_novelty
        from explore.sampler import NoveltySampler, SamplingConfig

        train_ex, eval_ex, _ = build_examples(catalog.histories, examples, vocab.size)
        sampler = NoveltySampler(out, vocab=vocab)
        sampling = SamplingConfig(n=cfg.eval_n, temperature=cfg.eval_temperature, seed=cfg.seed)
        report["evaluation"] = evaluate_novelty(
            sampler, eval_ex, train_ex, sampling, max_examples=cfg.eval_examples
        )
        sampler.close()
        info_path = Path(out) / INFO_FILE
        info = json.loads(info_path.read_text())
        info["report"] = report
        tmp = info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(info_path)
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
            f"recall@{ev['n']} of the next novel cluster: {ev['recall_at_n']:.3f} (frequency baseline "
            f"{ev['recall_frequency_baseline']:.3f}, random {ev['recall_random_baseline']:.3f}; "
            f"{ev['mean_distinct_candidates']} distinct candidates per key), novelty {ev['novelty']:.1%}, "
            f"{ev['examples']} held-out transitions",
        ]
    lines.append(f"model folder: {report['out']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", help="catalog folder (python -m jobs.build_catalog --out DIR)")
    p.add_argument("--out", help="model folder to write (default runs/novelty)")
    p.add_argument("--config", help="TOML or JSON file with the fields of NoveltyTrainConfig")
    p.add_argument("--base", help="tiny (default), smollm2-135m, or a local causal-LM folder")
    p.add_argument("--epochs", type=float, help="passes over the examples (default 3)")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="stop after N steps (0: epochs decide)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default 3e-3 full, 2e-4 LoRA)")
    p.add_argument("--lora-r", dest="lora_r", type=int, help="LoRA rank for pretrained bases (default 16)")
    p.add_argument("--max-per-key", dest="max_per_key", type=int, help="examples kept per history key (48)")
    p.add_argument("--eval-fraction", dest="eval_fraction", type=float, help="members held out (0.1)")
    p.add_argument(
        "--no-eval", dest="evaluate", action="store_const", const=False, help="skip the vLLM evaluation"
    )
    p.add_argument("--eval-n", dest="eval_n", type=int, help="samples per key for recall@n (20)")
    p.add_argument(
        "--eval-temperature", dest="eval_temperature", type=float, help="sampling temperature (1.5)"
    )
    p.add_argument(
        "--eval-examples", dest="eval_examples", type=int, help="held-out transitions evaluated (1000)"
    )
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)

    def body() -> int:
        cfg = merge_config(NoveltyTrainConfig, args, FLAGS)
        report = train(cfg, cfg.out)
        for line in summary_lines(report):
            print(line)
        return 0

    run_main(body)


if __name__ == "__main__":
    main()

"""The novelty model folder's own file, novelty.json, typed (`NoveltyModelInfo`), and how to read it: what
the sampler and the jobs need of a trained model without importing the trainer.

The layout is lm.info's, format_version 1, with the training config under "sft_config" and two keys of
its own: "prompt_format" ({"style", "k"}: how the model reads a history key) and "example_config" (how
its examples were built). Files written before "base", "method" and "lora" had their own keys read
them from sft_config and the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from explore.prompts import PromptFormat
from lm.info import ModelInfo

INFO_FILE = "novelty.json"
TRAIN = "python -m jobs.train_novelty --catalog DIR --out DIR"  # how to get a novelty model folder


@dataclass(frozen=True, kw_only=True)
class NoveltyModelInfo(ModelInfo, file=INFO_FILE, config_key="sft_config", what="novelty model", train=TRAIN):
    """novelty.json: the lm.info fields plus the prompt format and the example config."""

    prompt_format: PromptFormat  # how the model reads a history key; the sampler prompts it the same way
    example_config: dict  # explore.examples.ExampleConfig the training examples were built with (asdict)

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "prompt_format": self.prompt_format.to_dict(),
            "example_config": self.example_config,
        }

    @classmethod
    def _fields_from(cls, d: dict) -> dict[str, Any]:
        config = d[cls.CONFIG_KEY]
        base = d.get("base", config["base"])
        legacy = {
            "base": base,
            "method": d.get("method") or ("full" if base == "tiny" else "lora"),
        }
        return {
            **super()._fields_from({**legacy, **d}),
            "prompt_format": PromptFormat(**d["prompt_format"]),
            "example_config": dict(d.get("example_config") or {}),
        }


def read_model_info(folder: str | os.PathLike) -> NoveltyModelInfo:
    """novelty.json of a model folder trained here, or a ValueError that says how to get one."""
    return NoveltyModelInfo.read(folder)

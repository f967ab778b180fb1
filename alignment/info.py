"""The alignment model folder's own file, alignment.json, typed (`AlignmentModelInfo`): lm.info's layout,
format_version 1, with the training config under "config" and one key of its own, "text" (the pair text
the model reads). The base is saved resolved (a folder's absolute path) so a LoRA folder finds it again.
Files written before "lora" had its own key read it from the config's flat lora_* fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm.info import ModelInfo

INFO_FILE = "alignment.json"
PAIR_TEXT = "history: <name> (<description>) | ...\\ncandidate: <name> (<description>)<eos>"


TRAIN = "python -m jobs.train_alignment --catalog DIR --logs DIR --out DIR"  # how to get a model folder


@dataclass(frozen=True, kw_only=True)
class AlignmentModelInfo(ModelInfo, file=INFO_FILE, what="alignment model", train=TRAIN):
    """alignment.json: the lm.info fields plus the pair text."""

    text: str = PAIR_TEXT  # how a (history key, candidate) pair is written for the model

    def to_dict(self) -> dict:
        return {**super().to_dict(), "text": self.text}

    @classmethod
    def _fields_from(cls, d: dict) -> dict[str, Any]:
        return {**super()._fields_from(d), "text": str(d.get("text", PAIR_TEXT))}


def read_alignment_info(folder: str | os.PathLike) -> AlignmentModelInfo:
    """alignment.json of a model folder, or a ValueError that says how to get one."""
    return AlignmentModelInfo.read(folder)


def alignment_model_folder(path: str | os.PathLike) -> Path:
    """The alignment model folder itself, or the model/ inside a jobs.train_alignment output folder."""
    p = Path(path)
    inner = p / "model"
    return inner if not (p / INFO_FILE).is_file() and (inner / INFO_FILE).is_file() else p

"""The novelty model folder's own file, novelty.json (prompt format, clusters, training report), and how to
read it: what the sampler and the jobs need of a trained model without importing the trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from catalog.vocabulary import ClusterVocabulary
from explore.prompts import PromptFormat

INFO_FILE = "novelty.json"


def read_model_info(folder: str | os.PathLike) -> dict:
    """novelty.json of a model folder trained here, or a ValueError that says how to get one."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ValueError(
            f"model={str(folder)!r}: no {INFO_FILE}; not a novelty model folder. "
            "Train one with `python -m jobs.train_novelty --catalog DIR --out DIR`."
        )
    try:
        info = json.loads(path.read_text())
        PromptFormat(**info["prompt_format"])
        ClusterVocabulary(tuple(info["clusters"]["names"]), tuple(info["clusters"]["descriptions"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: corrupt ({exc!r}); retrain the model.") from exc
    return info

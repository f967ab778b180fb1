"""LoRA adapters (peft) on a causal LM's attention and MLP projections, for both LLMs."""

from __future__ import annotations

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model, base: str, *, r: int, alpha: int, dropout: float, task_type: str):
    """`model` wrapped with LoRA adapters (peft) on whichever attention and MLP projections it has."""
    from peft import LoraConfig, get_peft_model

    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    if not targets:
        raise ValueError(
            f"base={base!r}: none of the LoRA target modules {LORA_TARGETS} exist in this model."
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type
    )
    return get_peft_model(model, config)

"""What the export bundles share (mixture_lora, and moe_expert_lora where no native MoE exists): the plain base
model written as a standard HF directory, next to which a bundle puts its adapter and a standalone loader.

A bundle's base directory loads on its own with transformers (without the adapter); its loader script, written
from a string in the strategy's bundle module, patches the adapter in with torch + transformers + safetensors only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from forge_trl.injection.base import HEAD_CAUSAL_LM, HEAD_SEQ_CLS

# Where a bundle's loader script gets its base model (pasted into each loader at LOAD_BASE_MARKER): transformers'
# auto class for the head, or, for a reward model of a family transformers maps no classification class to, the
# class that the export's load_reward_model.py declares (forge_trl/models/score_head.py writes it).
LOAD_BASE_MARKER = "# <load_base>\n"
LOAD_BASE = """
def load_base(path, head, **from_pretrained_kwargs):
    declared = Path(path) / "load_reward_model.py"
    if head == "seq_cls" and declared.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location("load_reward_model", declared)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.load(path, **from_pretrained_kwargs)
    seq_cls = head == "seq_cls"
    auto = transformers.AutoModelForSequenceClassification if seq_cls else transformers.AutoModelForCausalLM
    return auto.from_pretrained(path, **from_pretrained_kwargs)
"""


def loader_script(template: str) -> str:
    """A bundle loader's text: `template` with the shared base-model loading pasted in."""
    return template.replace(LOAD_BASE_MARKER, LOAD_BASE)


# A reward model's score head is a PEFT modules_to_save copy: the trained copy is the real one.
TRAINED_COPY = ".modules_to_save.default."


def plain_state_dict(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the model under a PEFT wrapper as plain transformers names: LoRA parameters and frozen copies
    (TRL's `ref` adapter, PEFT's `original_module`) dropped, trained modules_to_save copies (a score head, a router)
    in place of their originals, `.base_layer` unwrapped."""
    state = {}
    for key, value in hf_model.state_dict().items():
        if "lora_" in key or ".ref." in key or "original_module" in key:
            continue
        if ".modules_to_save." in key:
            if TRAINED_COPY not in key:
                continue
            key = key.replace(TRAINED_COPY, ".")
        state[key.replace(".base_layer", "")] = value.detach().float()
    return state


def merge_plain_lora(peft_model) -> None:
    """Fold every plain PEFT LoRA linear (attention adapters beside forge's own layers) into its base weight."""
    from peft.tuners.lora import Linear as LoraLinear

    for module in peft_model.modules():
        if isinstance(module, LoraLinear) and not module.merged:
            module.merge(safe_merge=True, adapter_names=["default"])


def head_of(hf_model: torch.nn.Module) -> str:
    return HEAD_SEQ_CLS if type(hf_model).__name__.endswith("ForSequenceClassification") else HEAD_CAUSAL_LM


def write_base_model(peft_model, out_dir: Path) -> None:
    """The base model under `peft_model` (its own head, without any adapter) as a standard HF directory."""
    hf = peft_model.get_base_model()
    base = type(hf)(hf.config)
    base.load_state_dict(plain_state_dict(hf), strict=True)
    base.save_pretrained(out_dir, safe_serialization=True)

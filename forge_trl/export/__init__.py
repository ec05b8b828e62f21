"""Export a forge checkpoint to a directory that plain transformers loads, with no forge_trl import.

- full, dense_lora, native_moe_expert_lora: the adapter is merged into the weights.
- moe_expert_lora: the model becomes the native MoE architecture of its family (Qwen3 -> Qwen3-MoE,
  Llama/Mistral -> Mixtral); each expert is materialised as base + its LoRA and the router becomes the gate
  (see moe_native.py).
- mixture_lora: token-routed LoRA experts cannot fold into static weights. The export is the base model plus
  the adapter and a standalone loader script (see mixture_bundle.py).

A reward model (task=rm) exports with its score head. Where transformers has a sequence-classification class
for the family, AutoModelForSequenceClassification loads the export. Where it has none (OLMoE, Gemma 4 text,
Qwen3.5-MoE text, ...), forge trained transformers' GenericForSequenceClassification on the family's
PreTrainedModel (forge_trl/models/score_head.py); the export is the same standard directory plus
`load_reward_model.py`, which declares that class with transformers alone and loads the weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from forge_trl.errors import ConfigError

log = logging.getLogger("forge_trl")

EXPORT_INFO = "forge_export.json"


def export_checkpoint(checkpoint: str, out: str, *, overwrite: bool = False) -> Path:
    """Write `checkpoint` (a forge `final/` or any model forge can load) as a standard HF directory at `out`."""
    from forge_trl.config import ModelConfig
    from forge_trl.files import write_dir_atomically
    from forge_trl.injection.base import HEAD_CAUSAL_LM
    from forge_trl.injection.full import FullConfig, FullInjection
    from forge_trl.models.loading import load_injected, load_tokenizer, resolve_source
    from forge_trl.models.score_head import LOADER_FILE, STANDALONE_LOADER, is_forge_built

    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"out: {out_dir} already exists and is not empty; pass overwrite=true to replace it")
    source = resolve_source(checkpoint)
    head = source.run_info.head if source.run_info else HEAD_CAUSAL_LM
    injection = source.checkpoint_injection or FullInjection(FullConfig())
    tokenizer = load_tokenizer(source.tokenizer_path)
    model = load_injected(source, injection, head, ModelConfig(dtype="float32"), "fp32", tokenizer)
    model.eval()
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model

    def write(tmp: Path) -> None:
        method = injection.export(model, tmp)
        if is_forge_built(type(hf_model)):
            # transformers has no sequence-classification class for this family: the loader rebuilds forge's (a
            # bundle's own loader uses it for its base model).
            (tmp / LOADER_FILE).write_text(STANDALONE_LOADER, encoding="utf-8")
            method = (
                f"{method}; {type(hf_model).__name__} (GenericForSequenceClassification, no transformers class for "
                f"'{hf_model.config.model_type}') loads with {LOADER_FILE}"
            )
        tokenizer.save_pretrained(tmp)
        info = {
            "source": str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else checkpoint,
            "injection": injection.name,
            "method": method,
            "head": head,
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    write_dir_atomically(out_dir, write)
    log.info("exported %s (%s) to %s", checkpoint, injection.name, out_dir)
    return out_dir

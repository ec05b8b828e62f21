"""A model's structure without its weights: the preflight checks an injection against it before anything loads.

The skeleton is built from the model's config on PyTorch's meta device, so it costs no memory and no reading of
weight files whatever the model's size; a 30B MoE is checked in the same second as the tiny default.
"""

from __future__ import annotations

import logging

import torch

from forge_trl.injection.base import Injection

log = logging.getLogger("forge_trl")


def model_skeleton(base: str, *, trust_remote_code: bool = False) -> torch.nn.Module | None:
    """The causal-LM structure of `base` (a directory or hub id) on the meta device; None when its config cannot
    be read here (the full load then reports why)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        log.debug("no skeleton of %s for the preflight: %s", base, exc)
        return None


def preflight_injection(base: str, injection: Injection, *, trust_remote_code: bool = False) -> None:
    """Raise the injection's ConfigError (wrong family, missing layer, layer range) before any weight loads."""
    skeleton = model_skeleton(base, trust_remote_code=trust_remote_code)
    if skeleton is not None:
        injection.preflight(skeleton)

"""The 1-label score head of a reward model, on every causal-LM family transformers knows.

transformers maps most families to a `<X>ForSequenceClassification` class, and for most of them that class is
nothing but `GenericForSequenceClassification` mixed into the family's `<X>PreTrainedModel`:

    class Qwen3ForSequenceClassification(GenericForSequenceClassification, Qwen3PreTrainedModel): ...

It builds the decoder stack with `AutoModel.from_config(config)` under `base_model_prefix`, adds
`score = Linear(hidden_size, num_labels, bias=False)`, and pools the score of the last token that is not
`pad_token_id` (so left and right padding give the same score).

Some families have a causal LM but no such class (OLMoE `olmoe`, Gemma 4 text `gemma4_text`, Qwen3.5-MoE text
`qwen3_5_moe_text`, ...). For those, `sequence_classification_class` declares the same class at runtime from
the family's own `<X>PreTrainedModel`, exactly as transformers declares the mapped ones. It is transformers' own
head, forward and weight layout (`model.*` + `score.weight`), so a checkpoint saved from it is a standard
directory, and `STANDALONE_LOADER` (written beside an export) rebuilds the same class with transformers alone.
"""

from __future__ import annotations

import functools
from typing import Any

from forge_trl.errors import ModelError

# Set on every class this module builds (and only on those).
FORGE_BUILT = "_forge_score_head"
LOADER_FILE = "load_reward_model.py"


def is_forge_built(cls: type) -> bool:
    """True for a class `sequence_classification_class` built (transformers has no class for its family)."""
    return bool(cls.__dict__.get(FORGE_BUILT, False))


def _mapped(mapping, config_cls):
    try:
        return mapping[config_cls]
    except KeyError:
        return None


def sequence_classification_class(config) -> type:
    """The sequence-classification class for `config`: transformers' own mapped class when it has one, else the
    generic one built for the family from its `<X>PreTrainedModel` (cached per family)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    mapped = _mapped(AutoModelForSequenceClassification._model_mapping, type(config))
    if mapped is not None:
        return mapped
    causal = _mapped(AutoModelForCausalLM._model_mapping, type(config))
    if causal is None:
        raise ModelError(
            f"model_type '{config.model_type}' has neither a sequence-classification nor a causal-LM class in "
            "transformers; a reward model needs one of them"
        )
    return _generic_class(causal)


def family_pretrained_class(causal_cls: type) -> Any:
    """The family's `<X>PreTrainedModel` among the bases of its causal-LM class."""
    from transformers import PreTrainedModel

    for cls in causal_cls.__mro__[1:]:
        if issubclass(cls, PreTrainedModel) and cls is not PreTrainedModel:
            return cls
    raise ModelError(f"{causal_cls.__name__} derives from no family PreTrainedModel; cannot build a score head for it")


def class_name(pretrained_cls: type) -> str:
    """'OlmoePreTrainedModel' -> 'OlmoeForSequenceClassification'."""
    stem = pretrained_cls.__name__.removesuffix("PreTrainedModel") or pretrained_cls.__name__
    return f"{stem}ForSequenceClassification"


@functools.cache
def _generic_class(causal_cls: Any) -> type:
    from transformers.modeling_layers import GenericForSequenceClassification

    pretrained = family_pretrained_class(causal_cls)
    name = class_name(pretrained)
    attributes = {
        # Declared as if in the family's modeling module, like transformers' own classes: transformers reads that
        # module to decide what the class supports (MoE experts kernels such as grouped_mm, attention backends) and
        # treats a class from any other module as custom code (eager experts, conversions skipped).
        "__module__": pretrained.__module__,
        "__qualname__": name,
        "__doc__": (
            f"{name}: built by forge_trl (transformers has no sequence-classification class for "
            f"'{causal_cls.__name__}'). It is `GenericForSequenceClassification` on `{pretrained.__name__}`, as "
            "transformers declares its mapped classes: the decoder stack under `base_model_prefix`, a `score` "
            "Linear(hidden_size, num_labels, bias=False), pooled at the last token that is not the pad token."
        ),
        # The causal LM's config class: a text-only family's PreTrainedModel may name the composite config.
        "config_class": causal_cls.config_class,
        "base_model_prefix": pretrained.base_model_prefix,
        "input_modalities": ("text",),
        FORGE_BUILT: True,
    }
    # Parts of a causal checkpoint that no head uses (multi-token prediction, a vision tower). Set only when the
    # causal LM names some: TRL widens GenericForSequenceClassification's own list while it loads a model.
    ignored = getattr(causal_cls, "_keys_to_ignore_on_load_unexpected", None)
    if ignored:
        attributes["_keys_to_ignore_on_load_unexpected"] = ignored
    return type(name, (GenericForSequenceClassification, pretrained), attributes)


# Written beside an exported reward model of a family transformers has no sequence-classification class for.
# It declares the same class as `_generic_class` does, with transformers only.
STANDALONE_LOADER = '''"""Load this exported reward model with torch + transformers + safetensors (no forge_trl needed).

transformers has no sequence-classification class for this model family, so AutoModelForSequenceClassification
refuses it. This file declares the one forge_trl trained: transformers' own GenericForSequenceClassification on
the family's PreTrainedModel (what transformers declares for e.g. Qwen3ForSequenceClassification), and loads the
weights into it. The score of a sequence is taken at its last token that is not the pad token.

    from load_reward_model import load
    model = load("path/to/export")                     # .eval(); load(path, dtype=torch.bfloat16) etc. also work
    tokenizer = AutoTokenizer.from_pretrained("path/to/export")
    scores = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[:, 0]
"""
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_layers import GenericForSequenceClassification


def reward_model_class(config):
    """GenericForSequenceClassification on the family of `config` (found through its causal-LM class)."""
    causal = AutoModelForCausalLM._model_mapping[type(config)]
    pretrained = next(c for c in causal.__mro__[1:] if issubclass(c, PreTrainedModel) and c is not PreTrainedModel)
    name = pretrained.__name__.removesuffix("PreTrainedModel") + "ForSequenceClassification"
    attributes = {
        # As if declared in the family's modeling module, like transformers' own classes: transformers reads that
        # module to pick MoE experts kernels and attention backends, and treats other modules as custom code.
        "__module__": pretrained.__module__,
        "config_class": causal.config_class,
        "base_model_prefix": pretrained.base_model_prefix,
        "input_modalities": ("text",),
    }
    if getattr(causal, "_keys_to_ignore_on_load_unexpected", None):
        attributes["_keys_to_ignore_on_load_unexpected"] = causal._keys_to_ignore_on_load_unexpected
    return type(name, (GenericForSequenceClassification, pretrained), attributes)


def load(path=None, **from_pretrained_kwargs):
    path = Path(path) if path is not None else Path(__file__).resolve().parent
    config = AutoConfig.from_pretrained(path)
    model = reward_model_class(config).from_pretrained(path, use_safetensors=True, **from_pretrained_kwargs)
    return model.eval()
'''

"""Loading tokenizers and models from a built-in name, a hub id, a local directory or a forge checkpoint.

A forge checkpoint whose injection is an adapter (LoRA and friends) is rebuilt as: its base model, its
injection re-applied with the checkpoint's settings, its weights restored. A checkpoint of a full-parameter
run is itself a complete model directory and loads as a base model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from forge_trl.errors import ModelError
from forge_trl.injection import get_injection
from forge_trl.injection.base import HEAD_SEQ_CLS, Injection
from forge_trl.models.run_info import RunInfo, read_run_info
from forge_trl.models.tiny import TINY_NAMES, ensure_tiny

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """Where a run's model comes from."""

    requested: str  # what the user wrote in model.name_or_path
    tokenizer_path: str  # the directory or hub id the tokenizer loads from
    base: str  # the base model weights (a directory or hub id)
    base_id: str  # how forge_run.json records the base: built-in name, hub id or absolute path
    checkpoint: Path | None = None  # a forge adapter checkpoint whose weights are restored on top of `base`
    run_info: RunInfo | None = None  # the forge_run.json of a forge checkpoint (adapter or full)

    @property
    def checkpoint_injection(self) -> Injection | None:
        if self.checkpoint is None or self.run_info is None:  # a checkpoint always comes with its run info
            return None
        return get_injection(self.run_info.injection_name).from_settings(self.run_info.injection)


# Weight formats that torch.load unpickles. Unpickling can run code, so forge_trl reads weights only from
# safetensors, wherever they come from (a model directory, a forge checkpoint, a resume checkpoint).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Trainer state that transformers itself saves next to the weights in checkpoint-N and reads back with
# torch.load(weights_only=True), whose unpickler builds only tensors and plain containers; training_args.bin
# is never read back.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")
CONVERT_HINT = (
    "convert it to safetensors, e.g. AutoModelForCausalLM.from_pretrained(dir, use_safetensors=False)"
    ".save_pretrained(dir) in a trusted environment"
)


def _is_trainer_state(name: str) -> bool:
    return name in TRAINER_STATE_FILES or (name.startswith("rng_state") and name.endswith(".pth"))


def refuse_pickle_weights(directory: str | Path, what: str) -> None:
    """Raise ModelError when `directory` holds weights only in a pickle format (no *.safetensors)."""
    directory = Path(directory)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES and not _is_trainer_state(p.name)
    )
    if pickles:
        raise ModelError(
            f"{what} '{pickles[0]}' is a pickle weight file and forge_trl loads only safetensors "
            f"(unpickling can run code); {CONVERT_HINT}"
        )


def custom_code_error(where: str, exc: Exception) -> ModelError | None:
    """transformers' refusal to run a repository's own code, as a forge error naming the key that allows it."""
    if "trust_remote_code" not in str(exc):
        return None
    return ModelError(
        f"'{where}' needs its own Python code to load (auto_map in its config); forge_trl runs a model's code only "
        "with model.trust_remote_code=true. Set it only if you trust that code"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_source(name_or_path: str) -> ModelSource:
    """Classify `model.name_or_path` without loading any weights."""
    if name_or_path in TINY_NAMES:
        tiny = str(ensure_tiny(name_or_path))
        return ModelSource(name_or_path, tiny, tiny, name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.name_or_path '{name_or_path}' is a file; expected a model directory or hub id")
        info = read_run_info(path)
        refuse_pickle_weights(path, "model.name_or_path" if info is None else "forge checkpoint")
        if info is not None and info.injection_name != "full":
            base = resolve_source(info.base_model)
            return ModelSource(name_or_path, str(path), base.base, base.base_id, checkpoint=path, run_info=info)
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.name_or_path '{name_or_path}' is not a model directory (no config.json); expected a HF "
                "model directory, a forge checkpoint (<run>/final) or a hub id"
            )
        absolute = str(path.resolve())
        return ModelSource(name_or_path, str(path), absolute, absolute, run_info=info)
    if _looks_like_path(name_or_path):
        raise ModelError(f"model.name_or_path '{name_or_path}' does not exist")
    return ModelSource(name_or_path, name_or_path, name_or_path, name_or_path)  # a hub id, resolved by transformers


def resolve_precision(precision: str) -> str:
    """`auto` is bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve_dtype(dtype: str, precision: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise custom_code_error(path, exc) or ModelError(
            f"cannot load a tokenizer from '{path}': {str(exc).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        # Batched training needs a pad token; EOS is the usual stand-in and is masked out of every loss.
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("tokenizer has no pad token; using its EOS token '%s' for padding", tokenizer.eos_token)
    return tokenizer


def quantization_config(kind: str | None, compute_dtype: torch.dtype):
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def seq_cls_class(base: str, trust_remote_code: bool = False):
    """What loads `base` with a 1-label score head: AutoModelForSequenceClassification where transformers maps the
    family (or the model brings its own code), else forge's generic class for the family (models/score_head.py).
    Every forge load of a reward model (task=rm, a chained RM checkpoint, PPO, GRPO/RLOO, bench, export) comes here."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from forge_trl.models.score_head import is_forge_built, sequence_classification_class

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    if getattr(config, "auto_map", None):  # the model's own code decides (model.trust_remote_code)
        return AutoModelForSequenceClassification
    cls = sequence_classification_class(config)
    return cls if is_forge_built(cls) else AutoModelForSequenceClassification


def load_base_model(base: str, head: str, model_cfg, precision: str, tokenizer):
    """Load plain transformers weights with a causal-LM or a 1-label sequence-classification head."""
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(model_cfg.dtype, precision)
    kwargs = dict(dtype=dtype, trust_remote_code=model_cfg.trust_remote_code, use_safetensors=True)
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    quant = quantization_config(model_cfg.quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else "cpu"
    auto_cls = AutoModelForCausalLM
    try:
        if head == HEAD_SEQ_CLS:
            auto_cls = seq_cls_class(base, model_cfg.trust_remote_code)
            kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
        model = auto_cls.from_pretrained(base, **kwargs)
    except OSError as exc:
        first = str(exc).splitlines()[0]
        if "safetensors" in first or "pytorch_model.bin" in first:
            raise ModelError(
                f"'{base}' has no safetensors weights and forge_trl loads only safetensors (unpickling can run "
                f"code); {CONVERT_HINT}"
            ) from None
        raise ModelError(f"cannot load model '{base}': {first}") from None
    except ValueError as exc:
        raise custom_code_error(base, exc) or ModelError(
            f"cannot load model '{base}': {str(exc).splitlines()[0]}"
        ) from None
    if head == HEAD_SEQ_CLS:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_injected(source: ModelSource, injection: Injection, head: str, model_cfg, precision: str, tokenizer):
    """Base model + `injection` applied; the checkpoint's weights restored when `source` is one."""
    model = load_base_model(source.base, head, model_cfg, precision, tokenizer)
    checkpoint, restored = source.checkpoint, source.checkpoint_injection  # both set, or both None
    if checkpoint is not None and restored is not None and restored.name != injection.name:
        # A different strategy on top of an adapter checkpoint (e.g. full fine-tuning after LoRA SFT):
        # fold the checkpoint's delta into the base weights first.
        model = restored.apply(model, head)
        restored.load_weights(model, checkpoint)
        model = restored.merged(model)
        restored = None
    injection.preflight(model)
    model = injection.apply(model, head)
    if checkpoint is not None and restored is not None:
        injection.load_weights(model, checkpoint)
    return model


def load_for_inference(name_or_path: str, *, head: str = "causal_lm", precision: str = "auto"):
    """(model, tokenizer, run_info) with any injection merged, in eval mode: for benches and the demo."""
    from forge_trl.config import ModelConfig
    from forge_trl.injection.full import FullConfig, FullInjection

    source = resolve_source(name_or_path)
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = source.checkpoint_injection or FullInjection(FullConfig())
    model = load_injected(source, injection, head, ModelConfig(), resolve_precision(precision), tokenizer)
    model = injection.merged(model)
    model.eval()
    return model, tokenizer, source.run_info

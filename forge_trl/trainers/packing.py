"""Packing without a variable-length attention kernel: keep packed rows two-dimensional.

TRL's best-fit-decreasing packing fills rows of `max_length` tokens and then always trains padding-free: its
collator flattens the whole batch into one row of B·max_length tokens and marks sequence starts in position_ids.
A flash-attention kernel reads those boundaries (cu_seq_lens) and does the work of the real sequences only. Every
other attention (sdpa, eager: the CPU, and GPUs without flash-attn) builds a dense (B·L)² mask instead, which is B
times the attention work of B separate rows and makes packing slower than padding on small models.

Here the batch stays B rows of at most `max_length` tokens. Each row's position_ids restart at every packed
sequence and no attention_mask is passed, so transformers derives a block-diagonal causal mask per row from the
position_ids (masking_utils.find_packed_sequence_indices): attention never crosses a sequence boundary, RoPE
positions start at 0 for each sequence, and the attention work is that of B rows of L.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from forge_trl.trainers.trainer_base import TrainerBase

if TYPE_CHECKING:
    from transformers.data.data_collator import DataCollator

log = logging.getLogger("forge_trl")

# Attention implementations with variable-length kernels, which TRL's flattened padding-free batches suit best.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def wants_packed_rows(model) -> bool:
    """True unless the model's attention has a variable-length kernel (flash attention, Hub kernels)."""
    impl = str(getattr(model.config, "_attn_implementation", None) or "")
    return not (impl in VARLEN_ATTENTION or "flash" in impl or impl.startswith("kernels"))


def packed_rows_collator(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """TRL's language-modelling collator, asked for per-row position_ids instead of a flattened batch."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRowsCollator(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            # The first token of each packed sequence is never predicted from the sequence before it (TRL's
            # padding-free collator does the same).
            batch["labels"][batch["position_ids"] == 0] = -100
            return batch

    return PackedRowsCollator(
        pad_token_id=pad_token_id, padding_free=False, return_position_ids=True, pad_to_multiple_of=pad_to_multiple_of
    )


class PackedRowsMixin(TrainerBase):
    """Put before SFTTrainer in the MRO. With `packed_rows=True` and a packing config, a model whose attention has
    no variable-length kernel trains on packed rows: the collator keeps B rows with per-sequence position_ids, the
    attention mask of a packed batch is dropped right before the forward (so transformers takes the sequence
    boundaries from position_ids), and TRL's token count, which falls back to one row's length without a mask, is
    corrected to the real tokens."""

    data_collator: DataCollator  # Trainer's, replaced here (declared because this class assigns it)

    def __init__(self, *args, packed_rows: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed_rows = packed_rows and self.args.packing and self._wants_packed_rows()

    def _wants_packed_rows(self) -> bool:
        model = self.accelerator.unwrap_model(self.model)
        if not wants_packed_rows(model):
            log.info(
                "packing: %s attention reads sequence boundaries itself; keeping TRL's flattened batches",
                model.config._attn_implementation,
            )
            return False
        self.data_collator = packed_rows_collator(
            self.processing_class.pad_token_id, getattr(self.data_collator, "pad_to_multiple_of", None)
        )
        log.info(
            "packing: rows of up to %s tokens, sequence boundaries from position_ids (%s attention has no "
            "variable-length kernel)",
            self.args.max_length,
            model.config._attn_implementation,
        )
        return True

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not (self.packed_rows and "position_ids" in inputs and "attention_mask" in inputs):
            return super().compute_loss(model, inputs, *args, **kwargs)
        mask = inputs.pop("attention_mask")
        counted_before = self._total_train_tokens
        out = super().compute_loss(model, inputs, *args, **kwargs)
        if model.training:
            real = self.accelerator.gather_for_metrics(mask.sum()).sum().item()
            self._total_train_tokens = counted_before + real // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out

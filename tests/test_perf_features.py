"""The issue-7 optimisations change memory and speed, never results: split preference pairs give the same DPO/ORPO
steps as one batch, and packed rows give the same log-probs as separate sequences."""

from __future__ import annotations

import math

import pytest
import torch

from forge_trl.trainers import packing, split_pairs
from tests.injection_support import MODEL_FOR, train_in_process


class BatchSizes:
    """Forward pre-hook on the embedding: (batch size, gradients enabled) of every forward, recomputations too."""

    def __init__(self):
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, _module, args):
        self.calls.append((args[0].shape[0], torch.is_grad_enabled()))


def preference_run(tmp_path, task, strategy, split, hook=None, steps=3, extra=()):
    from transformers import TrainerCallback

    class HookEmbedding(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if hook is not None:
                model.get_input_embeddings().register_forward_pre_hook(hook)

    _, _, metrics = train_in_process(
        tmp_path / f"{task}-{strategy}-{split}",
        f"task={task}",
        f"injection={strategy}",
        f"model={MODEL_FOR.get(strategy, 'tiny')}",
        "data=demo_preference",
        "task.learning_rate=1e-3",
        "injection.dropout=0",
        f"task.split_pairs={split}",
        *extra,
        steps=steps,
        callbacks=(HookEmbedding(),),
    )
    return [r for r in metrics if "loss" in r]


@pytest.mark.parametrize(("task", "extra"), [("dpo", ()), ("orpo", ()), ("dpo", ("task.gradient_checkpointing=true",))])
def test_split_pairs_gives_the_one_batch_step_and_recomputes_the_first_half(task, extra, tmp_path):
    whole = preference_run(tmp_path, task, "dense_lora", "false", extra=extra)
    sizes = BatchSizes()
    split = preference_run(tmp_path, task, "dense_lora", "true", hook=sizes, extra=extra)

    assert len(whole) == len(split) == 3
    keys = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/margins")
    for one, two in zip(whole, split):
        for key in (k for k in keys if k in one):
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert whole[-1]["loss"] != whole[0]["loss"]  # the steps trained: equal values are not a frozen model's

    pairs = 2  # train_in_process: 2 pairs per step, so [chosen; rejected] is 4 sequences
    with_grad = [size for size, grad in sizes.calls if grad]
    # Per step: the first half, the second half, and the first half again, recomputed during backward.
    assert with_grad == [pairs] * 3 * 3
    if task == "dpo":  # the reference pass is not split (no graph to save)
        assert [size for size, grad in sizes.calls if not grad] == [2 * pairs] * 3


@pytest.mark.parametrize("strategy", ["moe_expert_lora", "native_moe_expert_lora"])
def test_split_pairs_with_routed_experts_replays_the_router_and_keeps_the_balancing_loss(strategy, tmp_path):
    """Recomputation reruns the router ops without recording them twice (a mismatch in saved tensors would make
    torch.utils.checkpoint raise); the balancing loss is computed per half, so it differs only slightly."""
    whole = preference_run(tmp_path, "dpo", strategy, "false")
    split = preference_run(tmp_path, "dpo", strategy, "true")
    for one, two in zip(whole, split):
        assert math.isfinite(two["loss"]) and math.isfinite(two["moe/aux_loss"])
        assert two["logps/chosen"] == pytest.approx(one["logps/chosen"], rel=1e-3)
        assert two["moe/aux_loss"] == pytest.approx(one["moe/aux_loss"], rel=0.05)


def test_split_forward_leaves_the_model_as_it_found_it():
    model = torch.nn.Linear(3, 1)
    with split_pairs.split_pair_forward(model):
        assert "forward" in vars(model)
    assert "forward" not in vars(model)
    patched = torch.nn.Linear(3, 1)
    own = patched.forward
    patched.forward = own  # an instance-level forward, as TRL's fused LM head installs
    with split_pairs.split_pair_forward(patched):
        assert patched.forward is not own
    assert patched.forward is own


# ---------------------------------------------------------------------------------------------------- packing
def test_packed_rows_give_each_sequence_its_own_log_probs():
    """Two rows, three packed sequences and a padded tail: per-token log-probs equal those of each sequence run
    alone, so attention stayed inside each sequence and positions restarted."""
    from transformers import AutoModelForCausalLM

    from forge_trl.models.loading import load_tokenizer
    from forge_trl.models.tiny import ensure_tiny

    directory = ensure_tiny("forge-tiny")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory).eval(), load_tokenizer(directory)
    texts = ["the cat sat on the mat", "two plus two is four", "a small model learns"]
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    examples = [
        {"input_ids": seqs[0] + seqs[1], "seq_lengths": [len(seqs[0]), len(seqs[1])]},
        {"input_ids": seqs[2], "seq_lengths": [len(seqs[2])]},
    ]
    batch = packing.packed_rows_collator(tokenizer.pad_token_id)(examples)

    assert batch["position_ids"][0].tolist() == list(range(len(seqs[0]))) + list(range(len(seqs[1])))
    assert batch["labels"][0, len(seqs[0])] == -100  # no prediction across the boundary
    # use_cache=False as in training (TRL's fused LM head sets it): with a cache, transformers skips the packed
    # sequence detection.
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits.log_softmax(-1)
        alone = [model(input_ids=torch.tensor([s])).logits.log_softmax(-1)[0] for s in seqs]
    n0, n1, n2 = (len(s) for s in seqs)
    torch.testing.assert_close(packed[0, :n0], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, n0 : n0 + n1], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, :n2], alone[2], atol=1e-5, rtol=1e-4)
    # The same rows with the padding mask TRL would pass: attention crosses the boundary and the values differ.
    with torch.no_grad():
        leaky = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            attention_mask=batch["attention_mask"],
        ).logits.log_softmax(-1)
    assert not torch.allclose(leaky[0, n0 : n0 + n1], alone[1], atol=1e-3)


def test_packed_sft_trains_on_rows_and_logs_real_tokens(tmp_path, monkeypatch):
    batches = []
    make = packing.packed_rows_collator

    def recording(*args, **kwargs):
        collator = make(*args, **kwargs)
        call = collator.torch_call

        def record(examples):
            batch = call(examples)
            batches.append({k: v.clone() for k, v in batch.items()})
            return batch

        collator.torch_call = record
        return collator

    monkeypatch.setattr(packing, "packed_rows_collator", recording)
    _, _, metrics = train_in_process(
        tmp_path,
        "task=sft",
        "data=demo_sft",
        "task.packing=true",
        "data.max_length=64",
        "task.per_device_train_batch_size=4",
        "task.learning_rate=1e-3",
        steps=12,
    )
    logs = [r for r in metrics if "loss" in r]
    first = batches[0]
    assert first["position_ids"].shape[0] == 4  # four rows, not one flattened row
    starts = int((first["position_ids"] == 0).sum())
    assert starts > 4  # several sequences per row
    assert logs[0]["num_tokens"] == first["attention_mask"].sum()  # real tokens, not one row's length
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_flash_attention_keeps_trl_flattened_batches():
    class Config:
        _attn_implementation = "flash_attention_2"

    class Model:
        config = Config()

    assert not packing.wants_packed_rows(Model())
    Config._attn_implementation = "sdpa"
    assert packing.wants_packed_rows(Model())

"""The plain TRL + PEFT script that forge_trl's overhead is measured against (`python -m benchmarks.bench_perf`).

It is what a user would write without forge_trl: read the JSONL rows, turn them into TRL's conversational
columns, load the model with transformers, hand TRL a `peft.LoraConfig` and train. Nothing here imports forge_trl;
bench_perf passes the same model directory, rows, batch, LoRA shape, precision, optimizer settings and task
settings that it passes to the forge run it is compared with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def conversational_rows(path: str, layout: str) -> list[dict]:
    """JSONL rows {prompt, response} (sft) or {prompt, chosen, rejected} (preference) as TRL columns."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        prompt = [{"role": "user", "content": raw["prompt"]}]
        if layout == "sft":
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": raw["response"]}]})
        else:
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": raw["chosen"]}],
                    "rejected": [{"role": "assistant", "content": raw["rejected"]}],
                }
            )
    return rows


def trl_classes(task: str):
    if task == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, SFTTrainer
    if task == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if task == "orpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    if task == "rm":
        from trl import RewardConfig, RewardTrainer

        return RewardConfig, RewardTrainer
    raise ValueError(f"no plain TRL script for task {task!r}")


def train(spec: dict, callbacks: list, trainer_hook=None) -> dict:
    """Train `spec["task"]` for `spec["train"]["max_steps"]` steps with plain TRL; returns a description of the run.
    `trainer_hook` is called with the trainer before training, as forge_trl.train.run does."""
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    task, bf16 = spec["task"], spec["precision"] == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if task == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(
            spec["model_dir"], num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype)
    lora = spec["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["targets"],
        bias="none",
        task_type="SEQ_CLS" if task == "rm" else "CAUSAL_LM",
    )
    dataset = Dataset.from_list(conversational_rows(spec["data_file"], spec["layout"]))

    config_cls, trainer_cls = trl_classes(task)
    t = spec["train"]
    config = config_cls(
        output_dir=spec["output_dir"],
        max_steps=t["max_steps"],
        learning_rate=t["learning_rate"],
        per_device_train_batch_size=t["batch"],
        gradient_accumulation_steps=1,
        logging_steps=t["logging_steps"],
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=t["warmup_steps"],
        max_grad_norm=t["max_grad_norm"],
        weight_decay=t["weight_decay"],
        gradient_checkpointing=t["gradient_checkpointing"],
        bf16=bf16,
        fp16=False,
        seed=t["seed"],
        data_seed=t["seed"],
        save_strategy="no",
        report_to="none",
        max_length=t["max_length"],
        **spec["task_args"],
    )
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if trainer_hook is not None:
        trainer_hook(trainer)
    trainer.train()
    return dict(implementation=f"plain TRL {trl.__version__} + PEFT")

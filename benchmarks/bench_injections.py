"""Step time of each injection strategy on the same model and batch, plus moe_expert_lora's expert computation
against a naive per-expert loop (every selected expert runs its whole FFN, base projections included).

    python -m benchmarks.bench_injections                 # tiny default + a mid-size Qwen3 config, CPU
    python -m benchmarks.bench_injections --sizes tiny --batch 8 --seq 128 --steps 20

A step is forward + backward + AdamW on a causal-LM loss. Prints a markdown table; the time is the median over
the steps after warm-up, and ratios are taken against dense_lora in the same process and size.

The naive loop is this module's `NaiveExpertLoop`: it takes the place of each moe_expert_lora layer in the model
(`torch.nn.Module.set_submodule`), routes with the layer's own router (`route`) and trains the layer's own
parameters, but runs every selected expert's full FFN with materialised weights W + s B A.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness

# Strategy -> settings; ranks chosen so that each trains a comparable number of parameters.
CASES = {
    "dense_lora": {"r": 16},
    "mixture_lora (4 experts)": {"name": "mixture_lora", "num_experts": 4, "r": 4},
    "moe_expert_lora (8 experts, top-2)": {"name": "moe_expert_lora", "num_experts": 8, "top_k": 2, "r": 8},
    "moe_expert_lora, naive expert loop": {
        "name": "moe_expert_lora",
        "num_experts": 8,
        "top_k": 2,
        "r": 8,
        "naive": True,
    },
}
# A mid-size dense Qwen3 (about 100M parameters) that still steps in seconds on a laptop CPU.
MID_CONFIG = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=512,
)


class NaiveExpertLoop(torch.nn.Module):
    """The textbook MoE over one moe_expert_lora layer: each (token, expert) pair runs the expert's full FFN,
    with per-expert weights W + s B A materialised (and differentiable). Same router, same parameters."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def expert_weights(self, adapter: str) -> dict[str, torch.Tensor]:
        ffn, scale = self.layer.get_base_layer(), self.layer.scaling[adapter]
        out = {}
        for proj in ("gate", "up", "down"):
            a = getattr(self.layer, f"lora_{proj}_A")[adapter].weight
            b = getattr(self.layer, f"lora_{proj}_B")[adapter].weight
            out[proj] = getattr(ffn, f"{proj}_proj").weight.unsqueeze(0) + scale * torch.bmm(b, a)
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layer = self.layer
        adapter = layer.active_adapters[0]
        ffn = layer.get_base_layer()
        tokens = x.reshape(-1, x.shape[-1])
        logits, weights, indices = layer.route(tokens, adapter)
        if layer.routing is not None:
            layer.routing.record(layer.layer_name, logits, indices)
        w = self.expert_weights(adapter)
        out = torch.zeros_like(tokens)
        for e in range(layer.num_experts[adapter]):
            rows, slots = torch.where(indices == e)
            if rows.numel() == 0:
                continue
            xe = tokens[rows]
            h = ffn.act_fn(xe @ w["gate"][e].T) * (xe @ w["up"][e].T)
            out.index_add_(0, rows, (h @ w["down"][e].T) * weights[rows, slots].to(tokens.dtype).unsqueeze(-1))
        return out.reshape(x.shape)


def use_naive_expert_loop(model: torch.nn.Module) -> int:
    """Put a NaiveExpertLoop in place of every moe_expert_lora layer of `model`; returns how many."""
    from forge_trl.injection.moe_expert_lora import MoeExpertLoraLayer

    names = [name for name, module in model.named_modules() if isinstance(module, MoeExpertLoraLayer)]
    for name in names:
        model.set_submodule(name, NaiveExpertLoop(model.get_submodule(name)))
    return len(names)


def model_source(size: str, workdir: Path):
    from forge_trl.models.loading import resolve_source

    if size == "tiny":
        return resolve_source("forge-tiny")
    return resolve_source(str(harness.build_random_qwen3(workdir / "qwen3-mid", MID_CONFIG)))


def time_case(source, settings: dict, batch: torch.Tensor, steps: int, warmup: int) -> tuple[float, int]:
    """Median seconds of a training step after `warmup` steps, and the number of trainable parameters."""
    from forge_trl.config import ModelConfig
    from forge_trl.injection import get_injection
    from forge_trl.models.loading import load_injected, load_tokenizer

    settings = dict(settings)
    naive = settings.pop("naive", False)
    name = settings.pop("name", "dense_lora")
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = get_injection(name).from_settings({"name": name, **settings})
    model = load_injected(source, injection, "causal_lm", ModelConfig(dtype="float32"), "fp32", tokenizer)
    if naive and not use_naive_expert_loop(model):
        raise ValueError(f"{name} has no moe_expert_lora layers for the naive expert loop")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in params)


def random_batch(source, batch: int, seq_len: int) -> torch.Tensor:
    from forge_trl.models.loading import load_tokenizer

    torch.manual_seed(0)
    return torch.randint(0, len(load_tokenizer(source.tokenizer_path)), (batch, seq_len))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "qwen3-mid"], choices=["tiny", "qwen3-mid"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            source = model_source(size, Path(workdir))
            batch = random_batch(source, args.batch, args.seq)
            dense_time = None
            for label, settings in CASES.items():
                seconds, trainable = time_case(source, settings, batch, args.steps, args.warmup)
                dense_time = dense_time or seconds
                rows.append((size, label, f"{trainable:,}", f"{seconds * 1000:.1f} ms", f"{seconds / dense_time:.2f}x"))
                print(f"{size:10s} {label:38s} {seconds * 1000:8.1f} ms", file=sys.stderr, flush=True)
    print(
        f"\n{harness.machine_line()}\nbatch {args.batch} x {args.seq} tokens, fp32, median of {args.steps} steps "
        f"after {args.warmup} warm-up steps\n"
    )
    print(harness.markdown_table(("model", "strategy", "trainable params", "step time", "vs dense_lora"), rows))


if __name__ == "__main__":
    main()

"""Step time of each injection strategy on the same model and batch, plus moe_expert_lora's expert computation
against a naive per-expert loop (every selected expert runs its whole FFN, base projections included).

    python scripts/bench_injections.py                 # tiny default + a mid-size Qwen3 config, CPU
    python scripts/bench_injections.py --sizes tiny --batch 8 --seq 128 --steps 20

A step is forward + backward + AdamW on a causal-LM loss. Prints a markdown table; the time is the median over
the steps after warm-up, and ratios are taken against dense_lora in the same process and size.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forge_trl.config import ModelConfig  # noqa: E402
from forge_trl.injection import get_injection  # noqa: E402
from forge_trl.injection.moe_expert_lora import MoeExpertLoraLayer  # noqa: E402
from forge_trl.models.loading import load_injected, load_tokenizer, resolve_source  # noqa: E402

# Strategy -> settings; ranks chosen so that each trains a comparable number of parameters.
CASES = {
    "dense_lora": {"r": 16},
    "mixture_lora (4 experts)": {"name": "mixture_lora", "num_experts": 4, "r": 4},
    "moe_expert_lora (8 experts, top-2)": {"name": "moe_expert_lora", "num_experts": 8, "top_k": 2, "r": 8},
    "moe_expert_lora, naive expert loop": {"name": "moe_expert_lora", "num_experts": 8, "top_k": 2, "r": 8,
                                           "naive": True},
}
# A mid-size dense Qwen3 (about 100M parameters) that still steps in seconds on a laptop CPU.
MID_CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, max_position_embeddings=512)


def naive_mix_experts(self, ffn, tokens, weights, indices, adapter):
    """Reference implementation: each (token, expert) pair runs the expert's full FFN, base projections too."""
    w = self.expert_weights_live(adapter)
    out = torch.zeros_like(tokens)
    for e in range(self.num_experts[adapter]):
        rows, slots = torch.where(indices == e)
        if rows.numel() == 0:
            continue
        x = tokens[rows]
        h = ffn.act_fn(x @ w["gate"][e].T) * (x @ w["up"][e].T)
        out.index_add_(0, rows, (h @ w["down"][e].T) * weights[rows, slots].unsqueeze(-1))
    return out


def expert_weights_live(self, adapter):
    """Per-expert weights W + s B A, differentiable (the naive loop trains through them)."""
    ffn, scale = self.get_base_layer(), self.scaling[adapter]
    out = {}
    for proj in ("gate", "up", "down"):
        a = getattr(self, f"lora_{proj}_A")[adapter].weight
        b = getattr(self, f"lora_{proj}_B")[adapter].weight
        out[proj] = getattr(ffn, f"{proj}_proj").weight.unsqueeze(0) + scale * torch.bmm(b, a)
    return out


def model_source(size: str, workdir: Path):
    if size == "tiny":
        return resolve_source("forge-tiny")
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    path = workdir / "qwen3-mid"
    if not path.exists():
        config = AutoConfig.for_model("qwen3", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      **MID_CONFIG)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return resolve_source(str(path))


def time_case(source, settings: dict, batch: torch.Tensor, steps: int, warmup: int) -> tuple[float, int]:
    settings = dict(settings)
    naive = settings.pop("naive", False)
    name = settings.pop("name", "dense_lora")
    tokenizer = load_tokenizer(source.tokenizer_path)
    injection = get_injection(name).from_settings({"name": name, **settings})
    model = load_injected(source, injection, "causal_lm", ModelConfig(dtype="float32"), "fp32", tokenizer)
    if naive:
        MoeExpertLoraLayer.expert_weights_live = expert_weights_live
        for module in model.modules():
            if isinstance(module, MoeExpertLoraLayer):
                module.mix_experts = naive_mix_experts.__get__(module)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "qwen3-mid"], choices=["tiny", "qwen3-mid"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            source = model_source(size, Path(workdir))
            vocab = len(load_tokenizer(source.tokenizer_path))
            batch = torch.randint(0, vocab, (args.batch, args.seq))
            dense_time = None
            for label, settings in CASES.items():
                seconds, trainable = time_case(source, settings, batch, args.steps, args.warmup)
                dense_time = dense_time or seconds
                rows.append((size, label, trainable, seconds, seconds / dense_time))
                print(f"{size:10s} {label:38s} {seconds * 1000:8.1f} ms", file=sys.stderr, flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; batch {args.batch} x {args.seq} tokens, fp32, median of {args.steps} steps\n")
    print("| model | strategy | trainable params | step time | vs dense_lora |")
    print("|---|---|---|---|---|")
    for size, label, trainable, seconds, ratio in rows:
        print(f"| {size} | {label} | {trainable:,} | {seconds * 1000:.1f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()

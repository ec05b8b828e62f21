"""forge_trl's benchmarks (formerly scripts/). Run each from the repository root as `python -m benchmarks.<name>`:

| module             | measures                                                                                  |
|--------------------|-------------------------------------------------------------------------------------------|
| `bench_perf`       | forge vs plain TRL step time, memory ratios between stages, packing, MoE-LoRA, GPU cases  |
| `bench_ppo`        | forge PPO vs TRL 0.29.1's PPOTrainer (episodes/s, peak memory)                            |
| `bench_injections` | step time per injection strategy, and moe_expert_lora against a naive expert loop         |
| `quality_injections` | held-out accuracy per injection strategy on a multi-style task mix                      |
| `ppo_pipeline`     | SFT -> RM -> PPO on the demo suite, greedy and sampled                                    |
| `soak_sft`         | resident-memory growth over a long SFT run                                                |
| `fsdp_memory`      | per-process peak memory, 2-process FSDP2 against 1 process (full, LoRA, PPO on Qwen3-0.6B) |

`harness` is the shared machinery (child processes, idle wait, step timing, peak memory, markdown tables);
`plain_trl` is the plain TRL + PEFT side of bench_perf's comparisons and imports nothing from forge_trl.
forge_trl never imports this package. Results, machine and date: docs/BENCHMARKS.md.
"""

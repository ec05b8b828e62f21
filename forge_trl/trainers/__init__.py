"""forge's trainers: one named class per TRL trainer forge uses, plus forge's own PPO.

| class              | module  | TRL base                          | extra mixins                          |
|--------------------|---------|-----------------------------------|---------------------------------------|
| `ForgeSFTTrainer`  | sft     | `trl.SFTTrainer`                  | packed rows                           |
| `ForgeDPOTrainer`  | dpo     | `trl.DPOTrainer`                  | split pairs, pre-tokenized cache      |
| `ForgeORPOTrainer` | orpo    | `trl.experimental.orpo`           | split pairs, stable odds ratio        |
| `ForgeRewardTrainer` | reward | `trl.RewardTrainer`              |                                       |
| `ForgeKTOTrainer`  | kto     | `trl.KTOTrainer`                  |                                       |
| `ForgeCPOTrainer`  | cpo     | `trl.experimental.cpo` (SimPO)    |                                       |
| `ForgeGRPOTrainer` | grpo    | `trl.GRPOTrainer`                 |                                       |
| `ForgeRLOOTrainer` | rloo    | `trl.RLOOTrainer`                 |                                       |
| `PPOTrainer`       | ppo     | `transformers.Trainer`            | forge's own loop (TRL 1.x has no PPO) |

Each is `ForgeTrainerMixin` (routing loss and metrics, non-finite guard, atomic checkpoints; see mixins.py) in
front of the TRL class. The modules import TRL at import time, so tasks import them only when they build a trainer.
"""

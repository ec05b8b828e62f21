"""Online RL: reward models as reward functions, and forge's own PPO (TRL 1.x has none)."""

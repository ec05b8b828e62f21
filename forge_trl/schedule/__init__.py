"""Training schedules over optimizer steps: which parameter groups train (phases) and how strongly LoRA
contributes (handoff). Both are trainer callbacks driven by `state.global_step`, so a resumed run picks up
at the same position."""

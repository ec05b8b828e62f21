"""forge's PPO trainer: the RLHF loop TRL 1.x no longer ships, in TRL's style (a Trainer subclass with its own
`train`), built on `PPOModels` so that policy, reference, reward and value can share one base model.

One PPO step:
1. sample a response to each prompt of the batch with the policy (`generate`), cut after the stop token;
2. score it: RM score at the last real token (minus `missing_eos_penalty` without a stop token), per-token
   log-probs of the policy and the reference, and the value of every response position;
3. rewards = -kl_coef * (logp - logp_ref) per token + score on the last token; GAE -> advantages, returns;
4. `num_ppo_epochs` passes over the batch in `num_mini_batches` minibatches: clipped policy loss + vf_coef x
   clipped value loss, one optimizer update per minibatch.

Checkpoints (`save_steps`) hold the trainable weights, optimizer, scheduler, RNG and trainer state, written
atomically; `train(resume_from_checkpoint=...)` continues the same run, skipping the prompts already used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerControl, TrainerState
from transformers.trainer_utils import TrainOutput

from forge_trl.errors import ConfigError, ModelError
from forge_trl.files import write_dir_atomically
from forge_trl.injection.routing import RoutingRecorder
from forge_trl.models.checkpoint import CHECKPOINT_PREFIX, list_checkpoints
from forge_trl.rl.ppo_math import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    masked_mean,
    masked_whiten,
    per_token_rewards,
)
from forge_trl.rl.ppo_models import POLICY, PPOModels
from forge_trl.trainers.mixins import NonFiniteGuardMixin, RoutingMixin
from forge_trl.trainers.ppo_config import PPOConfig

__all__ = ["PPOConfig", "PPOTrainer"]

log = logging.getLogger("forge_trl")

STATE_FILE = "ppo_state.json"


class LeftPadCollator:
    """Prompt token lists -> left-padded input_ids and attention_mask (generation appends on the right)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, width - n :] = torch.tensor(row["input_ids"])
            mask[i, width - n :] = 1
        return {"input_ids": ids, "attention_mask": mask}


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """Log-probs of `tokens` (B, T) under `logits` (B, T, V), and the entropy of each distribution."""
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    chosen = logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # a statistic only: with a graph it would hold a (B, T, V) tensor until the next step
        entropy = torch.stack([-(row.exp() * row).sum(-1) for row in logps])
    return chosen, entropy


class PPOTrainer(RoutingMixin, NonFiniteGuardMixin, Trainer):
    """Proximal policy optimisation over prompt-only data with an adapter policy and a forge reward model.

    Checkpoints are its own (`ppo_state.json` beside the adapters), written atomically; routing metrics and the
    non-finite guard come from the same mixins as every other forge trainer."""

    control: TrainerControl  # Trainer's; declared because this loop assigns it

    def __init__(
        self,
        models: PPOModels,
        args: PPOConfig,
        train_dataset,
        processing_class,
        callbacks=None,
        routing: RoutingRecorder | None = None,
        max_nonfinite_steps: int | None = None,
    ):
        if args.world_size > 1:
            # This loop never wraps the models for data parallelism: every process would sample the same prompts,
            # step on its own gradients and write the same checkpoints, so N processes would be N racing copies.
            raise ConfigError(
                f"task=ppo runs in a single process; this launch has {args.world_size}. forge's PPO does not "
                "synchronise gradients across processes yet: run `python -m forge_trl task=ppo ...` without "
                "accelerate launch / torchrun"
            )
        self.models = models
        self.tokenizer = processing_class
        self.stop_token_id = args.stop_token_id if args.stop_token_id is not None else processing_class.eos_token_id
        super().__init__(
            model=models.policy,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=LeftPadCollator(processing_class.pad_token_id),
            callbacks=callbacks,
            routing=routing,
            max_nonfinite_steps=max_nonfinite_steps,
        )
        self.kl = AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
        models.critic.to(args.device)  # the policy was moved by Trainer; a separate critic and the heads follow
        models.reward_head.to(args.device)
        models.value_head.to(args.device)
        for model in {id(models.policy): models.policy, id(models.critic): models.critic}.values():
            for module in model.modules():  # PPO's ratios assume the same function at rollout and update
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0

    # --------------------------------------------------------------------------------------------- setup
    def create_optimizer(self, model=None):
        params = [p for _, p in self.models.trainable_parameters()]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls(params, **optimizer_kwargs)
        return self.optimizer

    def _prompt_batches(self, epoch: int):
        generator = torch.Generator().manual_seed(self.args.seed + epoch)
        order = torch.randperm(len(self.train_dataset), generator=generator).tolist()
        size = self.args.per_device_train_batch_size
        for start in range(0, len(order) - size + 1, size):
            yield self.data_collator([self.train_dataset[i] for i in order[start : start + size]])

    def _steps_per_epoch(self) -> int:
        return max(len(self.train_dataset) // self.args.per_device_train_batch_size, 1)

    # --------------------------------------------------------------------------------------------- rollout
    def _forward_chunks(self, fn, *tensors):
        size = self.args.rollout_batch_size or tensors[0].shape[0]
        return torch.cat([fn(*(t[i : i + size] for t in tensors)) for i in range(0, tensors[0].shape[0], size)])

    def _policy_logprobs(self, sequences, attention, positions, context: int):
        # Logits of the response positions only (context - 1 .. T - 2): the LM head and the (B, T, V) log-softmax
        # then cost response_length, not the whole sequence, per row.
        keep = sequences.shape[1] - context + 1
        logits = self.models.policy(
            input_ids=sequences, attention_mask=attention, position_ids=positions, use_cache=False, logits_to_keep=keep
        ).logits[:, :-1]
        return token_logprobs(logits, sequences[:, context:], self.args.temperature)

    def _values(self, sequences, attention, positions, context: int):
        hidden = self.models.hidden_states(self.models.value_adapter, sequences, attention, positions)
        return self.models.value_head(hidden[:, context - 1 : -1].float()).squeeze(-1)

    def _scores(self, sequences, attention, positions, last_index):
        hidden = self.models.hidden_states(self.models.reward_adapter, sequences, attention, positions)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.models.reward_head(pooled.float()).squeeze(-1)

    @torch.no_grad()
    def rollout(self, batch: dict) -> dict:
        args, device = self.args, self.args.device
        prompt_ids, prompt_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        context = prompt_ids.shape[1]
        policy = self.models.policy
        policy.eval()
        generated = policy.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=args.response_length,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        responses = generated[:, context:]
        if responses.shape[1] < args.response_length:  # every sequence stopped early
            pad = responses.new_full(
                (responses.shape[0], args.response_length - responses.shape[1]), self.tokenizer.pad_token_id
            )
            responses = torch.cat([responses, pad], dim=1)
        is_stop = responses == self.stop_token_id
        has_stop = is_stop.any(dim=1)
        no_stop = torch.full_like(has_stop, 10**9, dtype=torch.long)
        first_stop = torch.where(has_stop, is_stop.float().argmax(dim=1), no_stop)
        positions_r = torch.arange(args.response_length, device=device).unsqueeze(0)
        response_mask = (positions_r <= first_stop.unsqueeze(1)).long()
        responses = torch.where(response_mask.bool(), responses, self.tokenizer.pad_token_id)
        sequences = torch.cat([prompt_ids, responses], dim=1)
        attention = torch.cat([prompt_mask, response_mask], dim=1)
        positions = (attention.cumsum(1) - 1).clamp_min(0)
        last_index = context + response_mask.sum(1) - 1

        logprobs = self._forward_chunks(
            lambda s, a, p: self._policy_logprobs(s, a, p, context)[0], sequences, attention, positions
        )
        with self.models.reference():
            ref_logprobs = self._forward_chunks(
                lambda s, a, p: self._policy_logprobs(s, a, p, context)[0], sequences, attention, positions
            )
        values = self._forward_chunks(lambda s, a, p: self._values(s, a, p, context), sequences, attention, positions)
        scores = self._forward_chunks(self._scores, sequences, attention, positions, last_index)
        raw_scores = scores.clone()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_stop).float()
        mask = response_mask.float()
        kl = (logprobs - ref_logprobs) * mask
        rewards = per_token_rewards(scores, kl, mask, self.kl.value)
        advantages, returns = gae(rewards, values * mask, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return dict(
            sequences=sequences,
            attention=attention,
            positions=positions,
            context=context,
            mask=mask,
            logprobs=logprobs * mask,
            values=values * mask,
            advantages=advantages,
            returns=returns,
            scores=raw_scores,
            kl=kl,
            has_stop=has_stop,
        )

    # --------------------------------------------------------------------------------------------- update
    def ppo_update(self, roll: dict) -> dict:
        args = self.args
        policy = self.models.policy
        policy.train()
        batch_size = roll["sequences"].shape[0]
        mini = max(batch_size // args.num_mini_batches, 1)
        params = [p for _, p in self.models.trainable_parameters()]
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "clip", "vclip", "approx_kl", "entropy", "aux")}
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(batch_size, device=roll["sequences"].device)
            for start in range(0, batch_size - mini + 1, mini):
                idx = order[start : start + mini]
                seq, att, pos, mask = (roll[k][idx] for k in ("sequences", "attention", "positions", "mask"))
                recorder = self.routing
                collect = recorder.collect() if recorder is not None else contextlib.nullcontext()
                with collect:
                    logprobs, entropy = self._policy_logprobs(seq, att, pos, roll["context"])
                aux = recorder.pop_loss() if recorder is not None else None
                values = self._values(seq, att, pos, roll["context"])
                pg = clipped_policy_loss(logprobs, roll["logprobs"][idx], roll["advantages"][idx], mask, args.cliprange)
                vf_loss, vf_clip = clipped_value_loss(
                    values, roll["values"][idx], roll["returns"][idx], mask, args.cliprange_value
                )
                loss = pg.loss + args.vf_coef * vf_loss
                if recorder is not None and aux is not None:
                    stats["aux"].append(float(aux.detach()))
                    if recorder.coef > 0:
                        loss = loss + recorder.coef * aux
                loss.backward()
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                self.control = self.callback_handler.on_pre_optimizer_step(args, self.state, self.control)
                if not torch.isfinite(loss.detach()):
                    # forge's non-finite guard has dropped the policy's gradients; the value head's go too.
                    self.optimizer.zero_grad(set_to_none=True)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                stats["pg"].append(float(pg.loss.detach()))
                stats["vf"].append(float(vf_loss.detach()))
                stats["clip"].append(float(pg.clipfrac))
                stats["vclip"].append(float(vf_clip))
                stats["approx_kl"].append(float(pg.approx_kl))
                stats["entropy"].append(float(masked_mean(entropy.detach(), mask)))
        return {k: sum(v) / len(v) for k, v in stats.items() if v}

    # --------------------------------------------------------------------------------------------- loop
    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        args = self.args
        steps_per_epoch = self._steps_per_epoch()
        total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        updates_per_step = args.num_ppo_epochs * args.num_mini_batches
        self.create_optimizer_and_scheduler(num_training_steps=total_steps * updates_per_step)
        self.state = TrainerState(
            max_steps=total_steps,
            logging_steps=args.logging_steps,
            save_steps=args.save_steps,
            num_train_epochs=math.ceil(total_steps / steps_per_epoch),
            train_batch_size=args.per_device_train_batch_size,
            log_history=[],
            stateful_callbacks=[],
        )
        episode = 0
        if resume_from_checkpoint is not None:
            episode = self._load_checkpoint(Path(resume_from_checkpoint))
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        losses = []
        step = self.state.global_step
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            for batch in self._prompt_batches(epoch):
                if skip:
                    skip -= 1
                    continue
                if step >= total_steps:
                    break
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                roll = self.rollout(batch)
                stats = self.ppo_update(roll)
                mean_kl = float(roll["kl"].sum(1).mean())
                if args.adaptive_kl:
                    self.kl.update(mean_kl, roll["sequences"].shape[0])
                step += 1
                episode += roll["sequences"].shape[0]
                self.state.global_step, self.state.epoch = step, step / steps_per_epoch
                losses.append(stats["pg"] + args.vf_coef * stats["vf"])
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                if step == 1 or step % args.logging_steps == 0 or step == total_steps:
                    self.log(self._metrics(roll, stats, mean_kl, episode, losses[-1]))
                if args.save_steps and args.save_steps > 0 and step % args.save_steps == 0 and step < total_steps:
                    self._save_checkpoint_dir(step, episode)
                if self.control.should_training_stop:
                    break
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        train_loss = sum(losses) / max(len(losses), 1)
        return TrainOutput(self.state.global_step, train_loss, {"train_loss": train_loss, "episodes": episode})

    def _metrics(self, roll: dict, stats: dict, mean_kl: float, episode: int, loss: float) -> dict:
        lengths = roll["mask"].sum(1)
        metrics = {
            "loss": loss,
            "objective/scores": float(roll["scores"].mean()),
            "objective/kl": mean_kl,
            "objective/entropy": stats["entropy"],
            "loss/policy_avg": stats["pg"],
            "loss/value_avg": stats["vf"],
            "policy/clipfrac_avg": stats["clip"],
            "val/clipfrac_avg": stats["vclip"],
            "policy/approxkl_avg": stats["approx_kl"],
            "policy/kl_coef": self.kl.value,
            "val/response_length": float(lengths.mean()),
            "val/no_eos_share": float((~roll["has_stop"]).float().mean()),
            "episode": episode,
            "learning_rate": self.lr_scheduler.get_last_lr()[0],
        }
        if "aux" in stats:
            metrics["moe/aux_loss"] = stats["aux"]
        return metrics

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint_dir(self, step: int, episode: int) -> None:
        output_dir = Path(self.args.output_dir)

        def fill(tmp: Path) -> None:
            self.models.save(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(
                {
                    "cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                tmp / "rng_state.pt",
            )
            state = {
                "global_step": step,
                "episode": episode,
                "kl_coef": self.kl.value,
                "log_history": self.state.log_history,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

        # On a full disk the newest complete checkpoint stays the one to resume from; the error names it.
        newest = next(iter(list_checkpoints(output_dir)[-1:]), None)
        write_dir_atomically(output_dir / f"{CHECKPOINT_PREFIX}{step}", fill, previous=newest)
        self._rotate_checkpoints(output_dir)

    def _rotate_checkpoints(self, output_dir: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, directory: Path) -> int:
        state_path = directory / STATE_FILE
        if not state_path.is_file():
            raise ModelError(f"{directory}: not a complete PPO checkpoint (no {STATE_FILE})")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        self.models.load(directory)
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        rng = torch.load(directory / "rng_state.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.kl.value = state["kl_coef"]
        self.state.global_step = state["global_step"]
        self.state.log_history = state["log_history"]
        log.info("PPO: resumed from %s at step %d", directory, state["global_step"])
        self.models.policy.set_adapter(POLICY)
        self.models.fix_trainable_flags()
        return state["episode"]

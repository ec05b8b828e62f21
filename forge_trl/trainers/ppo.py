"""forge's PPO trainer: the RLHF loop TRL 1.x no longer ships, in TRL's style (a Trainer subclass with its own
`train`), built on `PPOModels` so that policy, reference, reward and value can share one base model.

One PPO step:
1. sample a response to each prompt of the batch with the policy (`generate`), cut after the first stop token (any
   of the model's EOS ids, or `stop_token_id` when set);
2. score it: RM score at the last real token (minus `missing_eos_penalty` without a stop token), per-token
   log-probs of the policy and the reference, and the value of every response position;
3. rewards = -kl_coef * (logp - logp_ref) per token + score on the last token; GAE -> advantages, returns;
4. `num_ppo_epochs` passes over the batch in `num_mini_batches` minibatches: clipped policy loss + vf_coef x
   clipped value loss, one optimizer update per minibatch.

Checkpoints (`save_steps`) hold the trainable weights, optimizer, scheduler, RNG and trainer state, written
atomically; `train(resume_from_checkpoint=...)` continues the same run, skipping the prompts already used.

Several processes (`accelerate launch` with ddp.yaml / cpu_2proc.yaml, or fsdp2.yaml) run one PPO step together
as one process would run it with `per_device_train_batch_size x processes` prompts:
- every process draws the same global batch from the one seeded prompt order, left-pads all of it (so the padding
  is what one process would have), and keeps its own rows; each prompt's response is sampled from a stream seeded
  by the prompt (forge_trl/rl/ppo_sampling.py), so it is the same whichever process draws it;
- advantages are whitened with the global batch's statistics, the losses are means over the global batch's
  tokens, gradients are averaged over the processes (forge_trl/rl/ppo_parallel.py) and clipped by their global
  norm, and every logged number is a global one;
- under FSDP2 the base model is sharded per decoder layer and checkpoints gather the (adapter-sized) trainable
  state into the one-process format; process 0 writes checkpoints, each process its own RNG state.
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
from transformers.trainer_utils import IntervalStrategy, TrainOutput

from forge_trl.data.prompts import stop_token_ids
from forge_trl.distributed import mean_over_processes, sum_over_processes, write_launch_record
from forge_trl.errors import ConfigError, ModelError
from forge_trl.files import is_storage_failure, publish, storage_error
from forge_trl.injection.routing import RoutingRecorder
from forge_trl.models.checkpoint import CHECKPOINT_PREFIX, list_checkpoints, staging_dir
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
from forge_trl.rl.ppo_parallel import (
    average_gradients,
    clip_factor,
    global_grad_norm,
    is_shard,
    load_whole_optimizer_state,
    scale_gradients,
    shard_models,
    whole_optimizer_state,
)
from forge_trl.rl.ppo_sampling import cut_at_stop, prompt_seed, sample_responses
from forge_trl.trainers.callbacks import followed_metric
from forge_trl.trainers.mixins import NonFiniteGuardMixin, RoutingMixin, ShardedLaunchMixin
from forge_trl.trainers.ppo_config import PPOConfig

__all__ = ["PPOConfig", "PPOTrainer"]

log = logging.getLogger("forge_trl")

STATE_FILE = "ppo_state.json"
# The "epoch" of the held-out prompts' sampling streams (`prompt_seed`): one that no training epoch uses.
EVAL_EPOCH = -1


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


class PPOTrainer(ShardedLaunchMixin, RoutingMixin, NonFiniteGuardMixin, Trainer):
    """Proximal policy optimisation over prompt-only data with an adapter policy and a forge reward model.

    Checkpoints are its own (`ppo_state.json` beside the adapters), written atomically; routing metrics, the
    non-finite guard and FSDP2 on CPU processes come from the same mixins as every other forge trainer."""

    control: TrainerControl  # Trainer's; declared because this loop assigns it

    def __init__(
        self,
        models: PPOModels,
        args: PPOConfig,
        train_dataset,
        processing_class,
        eval_dataset=None,
        callbacks=None,
        routing: RoutingRecorder | None = None,
        max_nonfinite_steps: int | None = None,
    ):
        self.models = models
        self.tokenizer = processing_class
        # `stop_token_id` overrides; by default every EOS id of the tokenizer and the policy's generation config.
        self.stop_token_ids = (
            [args.stop_token_id] if args.stop_token_id is not None else stop_token_ids(processing_class, models.policy)
        )
        super().__init__(
            model=models.policy,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
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
        if self.is_fsdp_enabled:
            # Before the optimizer exists, so that it is built over the shards. `self.model` stays the policy
            # PeftModel, now holding shards, which train.py gathers for final/.
            shard_models(self.accelerator, models.base_models())

    # --------------------------------------------------------------------------------------------- setup
    def create_optimizer(self, model=None):
        params = [p for _, p in self.models.trainable_parameters()]
        # Sharded (FSDP2) adapter weights and the whole value head go in separate groups with the same settings:
        # the optimizers' multi-tensor kernels refuse a list that mixes DTensors with plain tensors.
        groups = [{"params": [p for p in params if is_shard(p) == sharded]} for sharded in (True, False)]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    def _prompt_batches(self, epoch: int):
        """Yield this process's part of each global batch: (left-padded prompts, their dataset indices).

        The global batch is collated whole and then split, so its padding is the one a single process with
        `per_device_train_batch_size x processes` prompts gives them."""
        generator = torch.Generator().manual_seed(self.args.seed + epoch)
        order = torch.randperm(len(self.train_dataset), generator=generator).tolist()
        per_process = self.args.per_device_train_batch_size
        size = per_process * self.args.world_size
        mine = slice(self.args.process_index * per_process, (self.args.process_index + 1) * per_process)
        for start in range(0, len(order) - size + 1, size):
            indices = order[start : start + size]
            batch = self.data_collator([self.train_dataset[i] for i in indices])
            yield {key: value[mine] for key, value in batch.items()}, indices[mine]

    def _steps_per_epoch(self) -> int:
        return max(len(self.train_dataset) // (self.args.per_device_train_batch_size * self.args.world_size), 1)

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
    def sample_and_score(self, batch: dict, seeds: list[int]) -> dict:
        """Sample a response to each prompt of `batch` (`seeds`: each prompt's sampling seed, `prompt_seed`) and score
        it: the sequences and their masks, per-token log-probs of the policy and the reference (masked), and the
        reward model's raw score (`missing_eos_penalty` not applied)."""
        args, device = self.args, self.args.device
        prompt_ids, prompt_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        context = prompt_ids.shape[1]
        policy = self.models.policy
        policy.eval()
        pad_id = self.tokenizer.pad_token_id
        responses = sample_responses(
            policy,
            prompt_ids,
            prompt_mask,
            seeds=seeds,
            temperature=args.temperature,
            max_new_tokens=args.response_length,
            stop_ids=self.stop_token_ids,
            pad_token_id=pad_id,
            synced_gpus=self.is_fsdp_enabled,
        )
        responses, response_mask, has_stop = cut_at_stop(responses, self.stop_token_ids, pad_id)
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
        scores = self._forward_chunks(self._scores, sequences, attention, positions, last_index)
        mask = response_mask.float()
        return dict(
            sequences=sequences,
            attention=attention,
            positions=positions,
            context=context,
            mask=mask,
            logprobs=logprobs * mask,
            ref_logprobs=ref_logprobs * mask,
            scores=scores,
            has_stop=has_stop,
        )

    @torch.no_grad()
    def rollout(self, batch: dict, seeds: list[int]) -> dict:
        """Sample, score and evaluate one batch (`sample_and_score`), then its values, rewards and advantages."""
        args = self.args
        roll = self.sample_and_score(batch, seeds)
        sequences, attention, positions, mask = (roll[k] for k in ("sequences", "attention", "positions", "mask"))
        values = self._forward_chunks(
            lambda s, a, p: self._values(s, a, p, roll["context"]), sequences, attention, positions
        )
        scores = roll["scores"]
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~roll["has_stop"]).float()
        kl = roll["logprobs"] - roll.pop("ref_logprobs")
        rewards = per_token_rewards(scores, kl, mask, self.kl.value)
        advantages, returns = gae(rewards, values * mask, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask, total=sum_over_processes)
        return dict(roll, values=values * mask, advantages=advantages, returns=returns, kl=kl)

    # --------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Score the policy on the held-out prompts (`eval_dataset`, by default the trainer's): one response each,
        sampled as in training but from a fixed per-prompt stream (`EVAL_EPOCH`), so two evaluations differ only by
        the policy. Returns, logs and reports to the callbacks (`on_evaluate`):
        - `<prefix>/score_mean`: the mean raw reward-model score of those responses;
        - `<prefix>/kl`: the mean over responses of their KL to the reference, the sum over response tokens of
          logp - logp_ref (as `objective/kl`; an estimate of KL(policy || reference), the responses being sampled
          from the policy).

        Several processes share the prompts as in training: each global batch of `per_device_eval_batch_size x
        processes` prompts is collated whole and split, the last one filled up with repeats that count zero, so
        every process runs as many forward passes (FSDP2's gathers are collectives); the means are global."""
        args = self.args
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("PPOTrainer: evaluation requires an eval_dataset")
        per_process = args.per_device_eval_batch_size
        size = per_process * args.world_size
        mine = slice(args.process_index * per_process, (args.process_index + 1) * per_process)
        totals = torch.zeros(3, dtype=torch.float64)  # score sum, KL sum, responses
        for start in range(0, len(dataset), size):
            real = list(range(start, min(start + size, len(dataset))))
            # Repeats of a prompt already in the batch: the left padding stays what the real prompts need.
            filled = real + real[:1] * (size - len(real))
            weight = torch.tensor([1.0] * len(real) + [0.0] * (size - len(real)), dtype=torch.float64)[mine]
            batch = self.data_collator([dataset[i] for i in filled])
            roll = self.sample_and_score(
                {key: value[mine] for key, value in batch.items()},
                [prompt_seed(args.seed, EVAL_EPOCH, i) for i in filled[mine]],
            )
            kl = (roll["logprobs"] - roll["ref_logprobs"]).sum(1).double().cpu()
            totals += torch.stack([(roll["scores"].double().cpu() * weight).sum(), (kl * weight).sum(), weight.sum()])
        score_sum, kl_sum, count = sum_over_processes(totals.to(args.device)).tolist()
        metrics = {f"{metric_key_prefix}/score_mean": score_sum / count, f"{metric_key_prefix}/kl": kl_sum / count}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics=metrics)
        return metrics

    def _track_best_metric(self, metrics: dict[str, float]) -> None:
        """Trainer's own update of `state.best_metric` (which early stopping compares with), after the callbacks saw
        the evaluation, as in Trainer's loop. It looks the metric up as `eval_<name>`, so it gets it under that key."""
        name = self.args.metric_for_best_model
        if name is not None:
            value = metrics[followed_metric(name, metrics)]
            self._determine_best_metric({name if name.startswith("eval_") else f"eval_{name}": value}, None)

    # --------------------------------------------------------------------------------------------- update
    def ppo_update(self, roll: dict) -> dict:
        """`num_ppo_epochs` passes over this process's rollouts in `num_mini_batches` minibatches, one optimizer
        update each. Returns this process's mean of each statistic; each is already normalised by the global token
        count, so their mean over the processes is the global value."""
        args = self.args
        policy = self.models.policy
        policy.train()
        batch_size = roll["sequences"].shape[0]
        mini = max(batch_size // args.num_mini_batches, 1)
        params = [p for _, p in self.models.trainable_parameters()]
        stats: dict[str, list[float]] = {
            k: [] for k in ("pg", "vf", "clip", "vclip", "approx_kl", "entropy", "grad_norm", "aux")
        }
        device = roll["sequences"].device
        for _ in range(args.num_ppo_epochs):
            # One minibatch is the whole batch: shuffling it would change nothing but the order of summation.
            shuffle = args.num_mini_batches > 1
            order = torch.randperm(batch_size, device=device) if shuffle else torch.arange(batch_size, device=device)
            for start in range(0, batch_size - mini + 1, mini):
                idx = order[start : start + mini]
                seq, att, pos, mask = (roll[k][idx] for k in ("sequences", "attention", "positions", "mask"))
                # The global minibatch's token count shared out over the processes: each process's losses are its
                # tokens' sums over it, so the average of the processes' gradients is the gradient of the mean
                # over every token of the global minibatch (in one process: its own token count).
                tokens = sum_over_processes(mask.sum()) / args.world_size
                recorder = self.routing
                collect = recorder.collect() if recorder is not None else contextlib.nullcontext()
                with collect:
                    logprobs, entropy = self._policy_logprobs(seq, att, pos, roll["context"])
                aux = recorder.pop_loss() if recorder is not None else None
                values = self._values(seq, att, pos, roll["context"])
                pg = clipped_policy_loss(
                    logprobs, roll["logprobs"][idx], roll["advantages"][idx], mask, args.cliprange, tokens
                )
                vf_loss, vf_clip = clipped_value_loss(
                    values, roll["values"][idx], roll["returns"][idx], mask, args.cliprange_value, tokens
                )
                loss = pg.loss + args.vf_coef * vf_loss
                if recorder is not None and aux is not None:
                    stats["aux"].append(float(aux.detach()))
                    if recorder.coef > 0:
                        loss = loss + recorder.coef * aux
                loss.backward()
                stats["grad_norm"].append(self._optimizer_step(params))
                stats["pg"].append(float(pg.loss.detach()))
                stats["vf"].append(float(vf_loss.detach()))
                stats["clip"].append(float(pg.clipfrac))
                stats["vclip"].append(float(vf_clip))
                stats["approx_kl"].append(float(pg.approx_kl))
                stats["entropy"].append(float(masked_mean(entropy.detach(), mask, tokens)))
        return {k: sum(v) / len(v) for k, v in stats.items() if v}

    def _optimizer_step(self, params: list[torch.nn.Parameter]) -> float:
        """Average the gradients over the processes, clip them by their global norm, step; returns that norm."""
        args = self.args
        average_gradients(params)
        norm = float(global_grad_norm(params))
        factor = clip_factor(norm, args.max_grad_norm)
        if factor != 1.0:
            # A non-finite norm (the same on every process) gives NaN: every gradient becomes NaN, so the non-finite
            # guard, which checks the policy model's gradients but not the value head's, sees this step too.
            scale_gradients(params, factor)
        self.control = self.callback_handler.on_pre_optimizer_step(args, self.state, self.control)
        if not math.isfinite(norm):
            # The guard drops the model's gradients; the value head's go too (and all of them without a guard).
            self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _global_means(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes, in one all-reduce (every process passes the same keys)."""
        if self.args.world_size == 1:
            return values
        keys = sorted(values)
        means = mean_over_processes(
            torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.args.device)
        )
        return dict(zip(keys, means.tolist()))

    @staticmethod
    def _rollout_stats(roll: dict) -> dict[str, float]:
        """Per-sequence means of one rollout batch; every process has as many sequences, so the mean of these over
        the processes is the global batch's."""
        return {
            "kl": float(roll["kl"].sum(1).mean()),
            "scores": float(roll["scores"].mean()),
            "response_length": float(roll["mask"].sum(1).mean()),
            "no_eos_share": float((~roll["has_stop"]).float().mean()),
        }

    # --------------------------------------------------------------------------------------------- loop
    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        args = self.args
        batch = args.per_device_train_batch_size * args.world_size
        if len(self.train_dataset) < batch:
            # Not one global batch per epoch: the loop below would wait forever for its first step.
            raise ConfigError(
                f"task=ppo: the training data has {len(self.train_dataset)} prompts, fewer than one PPO batch "
                f"(task.per_device_train_batch_size {args.per_device_train_batch_size} x {args.world_size} "
                "process(es)); lower the batch size or add prompts"
            )
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
            # Callbacks that write (metrics.jsonl, the progress line) do so on process 0 only.
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
        )
        episode = 0
        if resume_from_checkpoint is not None:
            episode = self._load_checkpoint(Path(resume_from_checkpoint))
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        losses = []
        step = self.state.global_step
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            for batch, indices in self._prompt_batches(epoch):
                if skip:
                    skip -= 1
                    continue
                if step >= total_steps:
                    break
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                roll = self.rollout(batch, [prompt_seed(args.seed, epoch, i) for i in indices])
                stats = self._global_means({**self.ppo_update(roll), **self._rollout_stats(roll)})
                episodes = roll["sequences"].shape[0] * args.world_size
                if args.adaptive_kl:
                    self.kl.update(stats["kl"], episodes)
                step += 1
                episode += episodes
                self.state.global_step, self.state.epoch = step, step / steps_per_epoch
                losses.append(stats["pg"] + args.vf_coef * stats["vf"])
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                if step == 1 or step % args.logging_steps == 0 or step == total_steps:
                    self.log(self._metrics(stats, episode, losses[-1]))
                if args.eval_strategy == IntervalStrategy.STEPS and step % int(args.eval_steps) == 0:
                    self._track_best_metric(self.evaluate())
                if args.save_steps and args.save_steps > 0 and step % args.save_steps == 0 and step < total_steps:
                    self._save_checkpoint_dir(step, episode)
                if self.control.should_training_stop:
                    break
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        train_loss = sum(losses) / max(len(losses), 1)
        return TrainOutput(self.state.global_step, train_loss, {"train_loss": train_loss, "episodes": episode})

    def _metrics(self, stats: dict, episode: int, loss: float) -> dict:
        metrics = {
            "loss": loss,
            "objective/scores": stats["scores"],
            "objective/kl": stats["kl"],
            "objective/entropy": stats["entropy"],
            "loss/policy_avg": stats["pg"],
            "loss/value_avg": stats["vf"],
            "policy/clipfrac_avg": stats["clip"],
            "val/clipfrac_avg": stats["vclip"],
            "policy/approxkl_avg": stats["approx_kl"],
            "policy/kl_coef": self.kl.value,
            "val/response_length": stats["response_length"],
            "val/no_eos_share": stats["no_eos_share"],
            "grad_norm": stats["grad_norm"],
            "episode": episode,
            "learning_rate": self.lr_scheduler.get_last_lr()[0],
        }
        if "aux" in stats:
            metrics["moe/aux_loss"] = stats["aux"]
        return metrics

    # --------------------------------------------------------------------------------------------- checkpoints
    def _rng_file(self) -> str:
        """Each process's RNG state is its own (it shuffles minibatches); one process keeps the plain name."""
        return "rng_state.pt" if self.args.world_size == 1 else f"rng_state_{self.args.process_index}.pt"

    def _save_checkpoint_dir(self, step: int, episode: int) -> None:
        """Write `checkpoint-<step>` complete or not at all.

        Every process fills the run's one staging directory (process 0 the shared state, each process its RNG
        state); process 0 renames it into place once all are done, so a job killed mid-save leaves the previous
        checkpoint as the newest one. The trainable weights and optimizer state are gathered whole first (a
        collective under FSDP2; adapter-sized), so a checkpoint has the one-process layout whatever the launch."""
        args = self.args
        output_dir = Path(args.output_dir)
        staged, target = staging_dir(output_dir), output_dir / f"{CHECKPOINT_PREFIX}{step}"
        main = self.is_world_process_zero()
        trainable = self.models.trainable_state()
        optimizer_state = whole_optimizer_state(self.optimizer)
        # On a full disk the newest complete checkpoint stays the one to resume from; the error names it.
        newest = next(iter(list_checkpoints(output_dir)[-1:]), None)
        try:
            if main:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            rng = {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
            torch.save(rng, staged / self._rng_file())
            if main:
                self.models.save(staged, trainable)
                torch.save(optimizer_state, staged / "optimizer.pt")
                torch.save(self.lr_scheduler.state_dict(), staged / "scheduler.pt")
                write_launch_record(staged)
                state = {
                    "global_step": step,
                    "episode": episode,
                    "kl_coef": self.kl.value,
                    "best_metric": self.state.best_metric,
                    "best_global_step": self.state.best_global_step,
                    "log_history": self.state.log_history,
                }
                (staged / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            self.accelerator.wait_for_everyone()
            if main:
                publish(staged, target)  # fsyncs it first; a checkpoint saved again at the same step is swapped
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            if main:
                shutil.rmtree(staged, ignore_errors=True)
            raise storage_error(exc, target, newest) from exc
        if main:
            self._rotate_checkpoints(output_dir)
        self.accelerator.wait_for_everyone()

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
        load_whole_optimizer_state(self.optimizer, torch.load(directory / "optimizer.pt", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        rng = torch.load(directory / self._rng_file(), weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.kl.value = state["kl_coef"]
        self.state.global_step = state["global_step"]
        # Absent from the checkpoints of older forge_trl versions.
        self.state.best_metric, self.state.best_global_step = state.get("best_metric"), state.get("best_global_step")
        self.state.log_history = state["log_history"]
        log.info("PPO: resumed from %s at step %d", directory, state["global_step"])
        self.models.policy.set_adapter(POLICY)
        self.models.fix_trainable_flags()
        return state["episode"]

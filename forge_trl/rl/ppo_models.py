"""PPO's four roles (policy, reference, value, reward) as adapters on as few base models as possible.

When the reward model was trained on the policy's base with the same injection (the usual SFT -> RM chain),
everything lives on ONE base model:

    adapter `default`  the policy, initialised from the input checkpoint (trained)
    adapter `ref`      a frozen copy of the input checkpoint's adapter; none for a fresh injection, whose
                       reference is the base itself (adapters disabled)
    adapter `reward`   the RM's adapter (frozen) + `reward_head`, the RM's score head (frozen)
    adapter `value`    a copy of the RM's adapter (trained) + `value_head`, initialised from the score head

Otherwise (another base, another injection) the reward and value adapters live on a second base model, loaded
from the RM checkpoint, and a note about the extra memory is logged. Either way the heads read the backbone's
last hidden states, so no second LM head or classifier is ever materialised.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from forge_trl.errors import ConfigError, ModelError
from forge_trl.injection.peft_base import ADAPTER_FILE, PeftInjection

log = logging.getLogger("forge_trl")

POLICY, REFERENCE, REWARD, VALUE = "default", "ref", "reward", "value"
TRAINABLE_FILE = "ppo_trainable.safetensors"


def backbone_of(peft_model) -> torch.nn.Module:
    """The decoder stack (no LM head, no classifier) of a PeftModel's transformers model."""
    hf = peft_model.get_base_model()
    return getattr(hf, hf.base_model_prefix)


def split_score_head(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """An RM adapter state dict -> (adapter weights, score-head weight (1, H)). The head is `score` in transformers'
    sequence-classification classes and in forge's generic one for unmapped families (models/score_head.py)."""
    score_keys = [k for k in state if k.endswith("score.weight")]
    if len(score_keys) != 1:
        raise ModelError("the reward model checkpoint has no single score head; was it trained with task=rm?")
    adapter = {k: v for k, v in state.items() if k not in score_keys and ".score." not in k}
    return adapter, state[score_keys[0]]


@dataclass
class PPOModels:
    policy: torch.nn.Module  # PeftModel with the policy (and reference) adapters
    critic: torch.nn.Module  # PeftModel with the reward and value adapters; `policy` itself when shared
    reward_adapter: str
    value_adapter: str
    reward_head: torch.nn.Linear
    value_head: torch.nn.Linear
    has_reference_adapter: bool
    shared_base: bool

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Policy adapter, value adapter and value head: everything PPO's optimizer updates."""
        params = [(n, p) for n, p in self.policy.named_parameters() if f".{POLICY}." in n]
        params += [(f"critic.{n}", p) for n, p in self.critic.named_parameters() if f".{self.value_adapter}." in n]
        params += [(f"value_head.{n}", p) for n, p in self.value_head.named_parameters()]
        return params

    def fix_trainable_flags(self) -> None:
        """PEFT's set_adapter makes the active adapter trainable and the others frozen; PPO trains two adapters
        at once, so the flags are restored after every switch (graphs already built keep their gradients)."""
        trainable = {id(p) for _, p in self.trainable_parameters()}
        for model in {id(self.policy): self.policy, id(self.critic): self.critic}.values():
            for param in model.parameters():
                param.requires_grad_(id(param) in trainable)
        self.reward_head.requires_grad_(False)

    @contextlib.contextmanager
    def adapter(self, model, name: str | None):
        """Run `model` with adapter `name` active (None: all adapters disabled)."""
        previous = model.active_adapter
        if name is None:
            with model.disable_adapter():
                yield
            return
        model.set_adapter(name)
        try:
            yield
        finally:
            model.set_adapter(previous)
            self.fix_trainable_flags()

    def reference(self):
        return self.adapter(self.policy, REFERENCE if self.has_reference_adapter else None)

    def hidden_states(self, adapter: str, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """The decoder stack's last hidden states under `adapter`.

        They are taken (by a forward hook) from a forward of the whole critic model, not by calling its decoder
        stack alone: sharded (FSDP2), the whole model is the root unit, and a forward that starts inside it skips
        the root's hooks, which gather the parameters no inner unit holds; and accelerate shards the final norm
        together with the LM head as one unit, whose forward never completes without the head. The head's own
        output costs one position (`logits_to_keep=1`) on a causal LM, one score per token on a classifier."""
        captured: list[torch.Tensor] = []
        hook = backbone_of(self.critic).register_forward_hook(
            lambda module, args, output: captured.append(output.last_hidden_state)
        )
        head_kwargs = {"logits_to_keep": 1} if self.shared_base else {}  # shared: the critic is the causal-LM policy
        try:
            with self.adapter(self.critic, adapter):
                self.critic(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                    **head_kwargs,
                )
        finally:
            hook.remove()
        return captured[0]

    def base_models(self) -> list[torch.nn.Module]:
        """The transformers models under the PeftModels: what FSDP2 shards. Each is the root that every forward
        (`generate` included, which PEFT hands straight to it) goes through."""
        models = [self.policy.get_base_model()]
        if not self.shared_base:
            models.append(self.critic.get_base_model())
        return models

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor, whole and on CPU, by `trainable_parameters` name. A collective when sharded:
        every process calls it, and each gets the whole state."""
        from forge_trl.rl.ppo_parallel import whole

        return {name: whole(param) for name, param in self.trainable_parameters()}

    def save(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """Write `trainable_state()` into a checkpoint directory (one process does this)."""
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in state.items()}, str(Path(directory) / TRAINABLE_FILE))

    def load(self, directory: Path) -> None:
        """Restore the trainable weights of a checkpoint; every process reads the whole file and keeps its shards."""
        from safetensors.torch import load_file

        from forge_trl.rl.ppo_parallel import shard_like

        saved = load_file(str(Path(directory) / TRAINABLE_FILE))
        params = dict(self.trainable_parameters())
        missing = sorted(set(params) - set(saved))
        if missing:
            raise ModelError(f"{directory}: checkpoint lacks '{missing[0]}'; was it written by this PPO setup?")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(shard_like(saved[name], param))


def copy_adapter(model, source: str, target: str) -> None:
    """Add adapter `target` with the config of `source` and the same weights (as TRL does for `ref`)."""
    model.add_adapter(target, model.peft_config[source])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{source}." in name:
                model.get_parameter(name.replace(f".{source}.", f".{target}.")).copy_(param)


def build_ppo_models(
    policy, policy_source, policy_injection, rm_path: str, model_cfg, precision, tokenizer
) -> PPOModels:
    """Attach reference, reward and value to the policy model, on one base model when the RM allows it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from forge_trl.injection.base import HEAD_SEQ_CLS
    from forge_trl.models.loading import load_injected
    from forge_trl.rl.reward import reward_source

    if not isinstance(policy_injection, PeftInjection):
        raise ConfigError("task=ppo trains an adapter policy; injection=full (task.full_parameter) is not supported")
    rm_source = reward_source(rm_path)
    if rm_source.checkpoint is None:
        raise ConfigError(
            f"task.reward_model.checkpoint_path: '{rm_path}' is a full-parameter reward model; PPO "
            "builds its reward and value from an adapter RM (train it with an adapter injection)"
        )
    rm_injection = rm_source.checkpoint_injection
    has_reference = policy_source.checkpoint is not None
    if has_reference:
        copy_adapter(policy, POLICY, REFERENCE)
    adapter_state, score = split_score_head(load_file(str(Path(rm_source.checkpoint) / ADAPTER_FILE)))

    shared = rm_source.base_id == policy_source.base_id and rm_injection.settings() == policy_injection.settings()
    if shared:
        critic, reward_adapter = policy, REWARD
        policy.add_adapter(REWARD, policy.peft_config[POLICY])
        result = set_peft_model_state_dict(policy, adapter_state, adapter_name=REWARD)
        if result.unexpected_keys:
            raise ModelError(f"{rm_path}: reward adapter weight '{result.unexpected_keys[0]}' does not fit the policy")
        log.info("PPO: policy, reference, reward and value share one base model (%s)", policy_source.base_id)
    else:
        # The critic reads the policy's token ids, so the RM must share the policy's vocabulary.
        from forge_trl.models.loading import load_tokenizer

        if load_tokenizer(rm_source.tokenizer_path).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"task.reward_model.checkpoint_path: '{rm_path}' was trained on base {rm_source.base_id}, whose "
                f"tokenizer differs from the policy's ({policy_source.base_id}); PPO needs a reward model with the "
                "policy's tokenizer"
            )
        critic = load_injected(rm_source, rm_injection, HEAD_SEQ_CLS, model_cfg, precision, tokenizer)
        reward_adapter = POLICY  # the RM's own adapter in its own model
        log.warning(
            "PPO: the reward model (base %s, injection %s) does not share the policy's base and injection "
            "(base %s, injection %s); reward and value run on a second copy of a base model, which costs its "
            "memory again",
            rm_source.base_id,
            rm_injection.name,
            policy_source.base_id,
            policy_injection.name,
        )
    copy_adapter(critic, reward_adapter, VALUE)

    hidden = score.shape[1]
    reward_head = torch.nn.Linear(hidden, 1, bias=False)
    value_head = torch.nn.Linear(hidden, 1, bias=False)
    device = next(policy.parameters()).device
    with torch.no_grad():
        reward_head.weight.copy_(score)
        value_head.weight.copy_(score)
    models = PPOModels(
        policy=policy,
        critic=critic,
        reward_adapter=reward_adapter,
        value_adapter=VALUE,
        reward_head=reward_head.to(device, torch.float32),
        value_head=value_head.to(device, torch.float32),
        has_reference_adapter=has_reference,
        shared_base=shared,
    )
    policy.set_adapter(POLICY)
    models.fix_trainable_flags()
    return models

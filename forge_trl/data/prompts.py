"""The one prompt renderer: a prompt as training sees it -> the text and token ids TRL's trainers build from it.

Everything that shows a model a prompt goes through here: the empty-label filter, the token cache, PPO's prompt
tokenization and the bench (generation, preference accuracy, reward-model scores). A prompt is TRL's `prompt`
column as `formats.to_trl_columns` builds it: a message list (system turn included) when the tokenizer has a chat
template, plain text otherwise. A held-out row takes that same row -> columns path (`heldout_columns`), so a
`system` field reaches the bench exactly as it reached training.

TRL 1.16's trainers (`trl.data_utils._tokenize`, used by SFTTrainer, DPOTrainer and RewardTrainer) tokenize
- a message list with the chat template (`add_generation_prompt=True` for a prompt alone); the rendered text is
  encoded without adding special tokens, since the template wrote them;
- plain text with `tokenizer(text=...)`, which adds the tokenizer's own special tokens (a BOS, for tokenizers
  that add one), after appending EOS to a completion.
Rendering to text first and encoding with `add_special_tokens` set that way gives the same ids, and lets callers
encode many rows in one batch.

Two settings of a real model's template are decided here too, for every renderer and for TRL alike:
- `data.chat_template_kwargs` (e.g. `{enable_thinking: false}` for Qwen3) is bound to the run's tokenizer
  (`set_chat_template_kwargs`) and passed to every render; TRL gets the same dict as its `chat_template_kwargs`
  column (`trl_rows`) or config field (GRPO, RLOO; forge_trl/tasks/base.py).
- A template that rejects a system turn (raises) or drops it from a rendering (Mistral's renders it only with the
  last user turn) gets the system text merged into the first user turn (system text, a blank line, user text), as
  Gemma 3's and Mistral's own templates join them; logged once per template (`fit_system_turn`).

`stop_token_ids` is the other end of a reply: every token id that ends one (the tokenizer's EOS and each id of the
model's `generation_config.eos_token_id`), for the bench's and PPO's generation.
"""

from __future__ import annotations

import json
import logging
from typing import Mapping, Sequence

from forge_trl.data.formats import to_trl_columns
from forge_trl.data.rows import Row

log = logging.getLogger(__name__)

# Where a held-out row given as a bare dict or string says it came from, in a DataError.
HELDOUT_SOURCE = "<held-out row>"
# The tokenizer attribute that holds the run's `data.chat_template_kwargs` (see `set_chat_template_kwargs`).
TEMPLATE_KWARGS_ATTR = "forge_chat_template_kwargs"
# TRL's per-row column of extra template variables (SFT, DPO, KTO, Reward, ORPO and CPO read it).
TEMPLATE_KWARGS_COLUMN = "chat_template_kwargs"
# The text joining a merged system turn to the first user turn (Gemma 3's and Mistral's own join).
SYSTEM_JOIN = "\n\n"
_PROBE = {"system": "forge system probe", "user": "forge user probe", "assistant": "forge reply probe"}
_system_support: dict[tuple[str, str], bool] = {}  # (template, kwargs) -> renders a system turn everywhere


def set_chat_template_kwargs(tokenizer, kwargs: Mapping | None) -> None:
    """Bind `data.chat_template_kwargs` to the tokenizer that renders this run's rows, so that every renderer
    below (the empty-label filter, the token cache, PPO's prompts, the bench) passes them to the template.
    Not saved with the tokenizer: a checkpoint records them in forge_run.json (`data`), where the bench reads them."""
    setattr(tokenizer, TEMPLATE_KWARGS_ATTR, dict(kwargs or {}))


def chat_template_kwargs(tokenizer) -> dict:
    """The extra template variables bound to `tokenizer` (empty when none were)."""
    return dict(getattr(tokenizer, TEMPLATE_KWARGS_ATTR, None) or {})


def _render(tokenizer, messages: list[dict], **options) -> str:
    return tokenizer.apply_chat_template(
        fit_system_turn(tokenizer, messages), tokenize=False, **options, **chat_template_kwargs(tokenizer)
    )


def system_turn_supported(tokenizer) -> bool:
    """Whether the chat template renders a system turn both in a prompt (with the generation prompt) and in a
    prompt + reply; probed once per template and kwargs."""
    from jinja2.exceptions import TemplateError

    kwargs = chat_template_kwargs(tokenizer)
    key = (str(tokenizer.chat_template), json.dumps(kwargs, sort_keys=True, default=str))
    if key not in _system_support:
        turns = [{"role": role, "content": text} for role, text in _PROBE.items()]
        try:
            prompt = tokenizer.apply_chat_template(turns[:2], tokenize=False, add_generation_prompt=True, **kwargs)
            full = tokenizer.apply_chat_template(turns, tokenize=False, **kwargs)
            supported = _PROBE["system"] in prompt and _PROBE["system"] in full
        except TemplateError:
            supported = False
        if not supported:
            log.warning(
                "the chat template rejects or drops a system turn: a row's system text (its `system` field or system "
                "message) is merged into its first user turn, followed by a blank line"
            )
        _system_support[key] = supported
    return _system_support[key]


def fit_system_turn(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` as this tokenizer's template can render them: a leading system turn the template rejects or
    drops becomes the start of the first user turn (`SYSTEM_JOIN` between them); otherwise unchanged."""
    if not messages or messages[0].get("role") != "system" or system_turn_supported(tokenizer):
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0].get("role") == "user":
        rest[0]["content"] = f"{system}{SYSTEM_JOIN}{rest[0]['content']}"
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def trl_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """TRL columns as TRL's trainers must render them with this tokenizer: system turns fitted to the template
    (`fit_system_turn`) and, when kwargs are bound, TRL's `chat_template_kwargs` column on every row (all rows
    or none: a dataset column must be present in each)."""
    kwargs = chat_template_kwargs(tokenizer)
    out = []
    for row in rows:
        row = dict(row)
        for column in ("prompt", "messages"):
            if is_conversational(row.get(column)):
                row[column] = fit_system_turn(tokenizer, row[column])
        if kwargs:
            row[TEMPLATE_KWARGS_COLUMN] = dict(kwargs)
        out.append(row)
    return out


def uses_chat_template(tokenizer, chat_template: bool = True) -> bool:
    """Whether prompt/response rows become message lists: `data.chat_template` and a tokenizer that has one."""
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def is_conversational(prompt) -> bool:
    return isinstance(prompt, list)


def with_eos(text: str, eos: str | None) -> str:
    return text if eos is None or text.endswith(eos) else text + eos


def render_prompt(tokenizer, prompt) -> str:
    """The prompt text the model is given: a message list through the chat template with the generation prompt,
    plain text as it is."""
    if is_conversational(prompt):
        return _render(tokenizer, prompt, add_generation_prompt=True)
    return prompt


def render_sequence(tokenizer, prompt, completion) -> str:
    """Prompt + completion as one training sequence: one conversation through the chat template (no generation
    prompt), or plain text with EOS appended to the completion."""
    if is_conversational(prompt):
        return _render(tokenizer, prompt + completion)
    return prompt + with_eos(completion, tokenizer.eos_token)


def encode(tokenizer, texts: Sequence[str], conversational: bool, **kwargs):
    """Tokenize rendered texts as TRL does (see the module docstring); `kwargs` go to the tokenizer call."""
    return tokenizer(list(texts), add_special_tokens=not conversational, **kwargs)


def token_ids(tokenizer, texts: Sequence[str], conversational: Sequence[bool]) -> list[list[int]]:
    """Token ids of rendered texts, each encoded by its own kind (batched per kind)."""
    ids: list[list[int]] = [[] for _ in texts]
    for kind in (True, False):
        positions = [i for i, flag in enumerate(conversational) if flag == kind]
        if positions:
            encoded = encode(tokenizer, [texts[i] for i in positions], kind)["input_ids"]
            for i, row_ids in zip(positions, encoded):
                ids[i] = list(row_ids)
    return ids


def encode_prompts(tokenizer, prompts: Sequence, **kwargs):
    """A batch of prompt columns rendered and tokenized as the trainers do (for generation: pass padding)."""
    kinds = {is_conversational(p) for p in prompts}
    if len(kinds) > 1:
        raise ValueError("a batch of prompts mixes message lists and plain text")
    return encode(tokenizer, [render_prompt(tokenizer, p) for p in prompts], kinds.pop() if kinds else False, **kwargs)


def prompt_ids(tokenizer, prompt) -> list[int]:
    """TRL's tokenization of a prompt column alone (what the model is given before it answers)."""
    return token_ids(tokenizer, [render_prompt(tokenizer, prompt)], [is_conversational(prompt)])[0]


def sequence_ids(tokenizer, prompt, completion) -> list[int]:
    """TRL's tokenization of prompt + completion (what SFT, DPO and the reward model train on)."""
    return token_ids(tokenizer, [render_sequence(tokenizer, prompt, completion)], [is_conversational(prompt)])[0]


def document_ids(tokenizer, text: str) -> list[int]:
    """SFTTrainer's tokenization of a plain `text` row: EOS appended, the tokenizer's special tokens added."""
    return list(encode(tokenizer, [with_eos(text, tokenizer.eos_token)], False)["input_ids"][0])


def completion_column(prompt, text: str):
    """A response as the completion column that goes with `prompt`: an assistant turn after messages, else text."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


def split_completion(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one prompt/completion pair, split as SFTTrainer splits them: where the
    tokenized prompt and the tokenized prompt + completion diverge (not always at the prompt's length)."""
    from trl.data_utils import common_prefix_length

    full = sequence_ids(tokenizer, prompt, completion)
    prompt_len = common_prefix_length(prompt_ids(tokenizer, prompt), full)
    return full[:prompt_len], full[prompt_len:]


def split_preference(tokenizer, prompt, chosen, rejected) -> dict[str, list[int]]:
    """DPOTrainer's `prompt_ids`, `chosen_ids` and `rejected_ids` of one preference row."""
    from trl.data_utils import common_prefix_length

    prompt_only = prompt_ids(tokenizer, prompt)
    chosen_full = sequence_ids(tokenizer, prompt, chosen)
    rejected_full = sequence_ids(tokenizer, prompt, rejected)
    prompt_len = min(common_prefix_length(prompt_only, chosen_full), common_prefix_length(prompt_only, rejected_full))
    return {
        "prompt_ids": prompt_only[:prompt_len],
        "chosen_ids": chosen_full[prompt_len:],
        "rejected_ids": rejected_full[prompt_len:],
    }


def heldout_columns(row: dict | str | Row, layout: str, tokenizer) -> dict:
    """A held-out row as the TRL columns training builds from the same row for this tokenizer: `prompt_only` gives
    {prompt}, `prompted_preference` {prompt, chosen, rejected}. A bare string is a row with just a prompt."""
    if isinstance(row, str):
        row = {"prompt": row}
    if not isinstance(row, Row):
        row = Row(row, HELDOUT_SOURCE, None)  # no line to name
    return to_trl_columns(row, layout, uses_chat_template(tokenizer))


def heldout_prompt(row: dict | str | Row, tokenizer):
    """A held-out row's prompt column, as training sees it (system turn included)."""
    return heldout_columns(row, "prompt_only", tokenizer)["prompt"]


def heldout_text(row: dict | str | Row) -> str:
    """A held-out row's prompt for a reader (a log line, an external judge): the system text, if any, then the
    prompt."""
    data = row.data if isinstance(row, Row) else {"prompt": row} if isinstance(row, str) else row
    system = data.get("system")
    return f"{system}\n\n{data['prompt']}" if isinstance(system, str) and system.strip() else data["prompt"]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends a reply: the tokenizer's EOS, then each id of the model's
    `generation_config.eos_token_id` (an int or a list; chat models list their end-of-turn tokens there, e.g.
    Gemma 3's `<end_of_turn>` beside `<eos>`). TRL's GRPOTrainer and RLOOTrainer build their stop ids by the same
    rule; the bench and forge's PPO use this one."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id] + ([configured] if isinstance(configured, int) else list(configured or []))
    return [int(i) for n, i in enumerate(ids) if i is not None and i not in ids[:n]]

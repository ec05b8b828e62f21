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
"""

from __future__ import annotations

from typing import Sequence

from forge_trl.data.formats import to_trl_columns
from forge_trl.data.rows import Row

# Where a held-out row given as a bare dict or string says it came from, in a DataError.
HELDOUT_SOURCE = "<held-out row>"


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
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return prompt


def render_sequence(tokenizer, prompt, completion) -> str:
    """Prompt + completion as one training sequence: one conversation through the chat template (no generation
    prompt), or plain text with EOS appended to the completion."""
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt + completion, tokenize=False)
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

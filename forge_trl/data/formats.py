"""Field layouts users have, validated row by row and mapped to TRL's dataset columns.

`data.layout` names the layout:

| layout               | accepted row fields                                                              |
|----------------------|-----------------------------------------------------------------------------------|
| text                 | {text}                                                                            |
| sft                  | {messages} · {prompt, response} · {instruction, [input], response} ·               |
|                      | {prompt, completion} · {text}                                                     |
| preference           | {chosen, rejected} (prompt implicit in both) · {prompt, chosen, rejected}          |
| prompted_preference  | {prompt, chosen, rejected}                                                        |
| prompt_only          | {prompt} · {messages}                                                             |
| unpaired_preference  | {prompt, completion, label} (label true = desirable; KTO)                          |

With `chat=True` (the default, when the tokenizer has a chat template) prompt/response rows become TRL's
conversational columns, so TRL applies the template and masks the prompt out of the loss. Extra fields in a
row are ignored (the demo suite keeps `family` and `answer` for its checker).
"""

from __future__ import annotations

from forge_trl.data.rows import Row
from forge_trl.errors import DataError

LAYOUTS: dict[str, list[tuple[str, ...]]] = {
    "text": [("text",)],
    "sft": [("messages",), ("prompt", "response"), ("instruction", "response"), ("prompt", "completion"), ("text",)],
    "preference": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "prompted_preference": [("prompt", "chosen", "rejected")],
    "prompt_only": [("prompt",), ("messages",)],
    "unpaired_preference": [("prompt", "completion", "label")],
}
ROLES = ("system", "user", "assistant")
OPTIONAL_STRING_FIELDS = ("system", "input")


def describe_layout(layout: str) -> str:
    return " or ".join("{" + ", ".join(fields) + "}" for fields in LAYOUTS[layout])


def match_fields(row: Row, layout: str) -> tuple[str, ...]:
    """The first field set of `layout` that the row has in full; a DataError naming the missing field if none."""
    for fields in LAYOUTS[layout]:
        if all(name in row.data for name in fields):
            return fields
    closest = max(LAYOUTS[layout], key=lambda fields: sum(name in row.data for name in fields))
    missing = next(name for name in closest if name not in row.data)
    raise DataError(
        f"missing field '{missing}'; a {layout} row needs {describe_layout(layout)} (row has: "
        f"{', '.join(sorted(row.data)) or 'no fields'})",
        path=row.path,
        line=row.line,
        field=missing,
    )


def _string(row: Row, name: str) -> str:
    value = row.data[name]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", path=row.path, line=row.line, field=name)
    if not value.strip():
        raise DataError("is empty; expected non-empty text", path=row.path, line=row.line, field=name)
    return value


def _messages(row: Row, name: str) -> list[dict]:
    value = row.data[name]
    if not isinstance(value, list) or not value:
        raise DataError(
            "expected a non-empty list of {role, content} messages", path=row.path, line=row.line, field=name
        )
    out = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise DataError("expected an object with 'role' and 'content'", path=row.path, line=row.line, field=where)
        if message["role"] not in ROLES:
            raise DataError(
                f"role '{message['role']}' is not one of {', '.join(ROLES)}", path=row.path, line=row.line, field=where
            )
        if not isinstance(message["content"], str):
            raise DataError(
                f"content must be a string, got {type(message['content']).__name__}",
                path=row.path,
                line=row.line,
                field=where,
            )
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _text_or_messages(row: Row, name: str):
    return _messages(row, name) if isinstance(row.data[name], list) else _string(row, name)


def _user_turn(row: Row, text: str) -> list[dict]:
    turns = []
    if "system" in row.data:
        turns.append({"role": "system", "content": _string(row, "system")})
    turns.append({"role": "user", "content": text})
    return turns


def _prompt_text(row: Row, fields: tuple[str, ...]) -> str:
    if fields[0] == "instruction":
        text = _string(row, "instruction")
        extra = row.data.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DataError(
                f"expected a string, got {type(extra).__name__}", path=row.path, line=row.line, field="input"
            )
        return f"{text}\n\n{extra}" if extra and extra.strip() else text
    return _string(row, fields[0])


def to_trl_columns(row: Row, layout: str, chat: bool) -> dict:
    """One raw row -> the TRL columns for `layout` (conversational when `chat`)."""
    fields = match_fields(row, layout)
    if fields == ("text",):
        return {"text": _string(row, "text")}
    if fields == ("messages",):
        messages = _messages(row, "messages")
        if not chat:
            raise DataError(
                "messages rows need a tokenizer with a chat template (data.chat_template=true)",
                path=row.path,
                line=row.line,
                field="messages",
            )
        if layout == "prompt_only":
            if messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            return {"prompt": messages}
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(
                "the last message must be an assistant reply that follows a prompt",
                path=row.path,
                line=row.line,
                field="messages",
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if layout == "prompt_only":
        prompt = _string(row, "prompt")
        return {"prompt": _user_turn(row, prompt) if chat else prompt}
    if fields[-2:] == ("chosen", "rejected"):
        return _preference_columns(row, fields, chat)
    if fields == ("prompt", "completion", "label"):
        label = row.data["label"]
        if not isinstance(label, bool):
            raise DataError(
                f"expected true or false, got {type(label).__name__}", path=row.path, line=row.line, field="label"
            )
        prompt, completion = _string(row, "prompt"), _string(row, "completion")
        if chat:
            return {
                "prompt": _user_turn(row, prompt),
                "completion": [{"role": "assistant", "content": completion}],
                "label": label,
            }
        return {"prompt": prompt, "completion": completion, "label": label}
    prompt, response = _prompt_text(row, fields), _string(row, fields[-1])
    if chat:
        return {"prompt": _user_turn(row, prompt), "completion": [{"role": "assistant", "content": response}]}
    return {"prompt": prompt, "completion": response}


def _preference_columns(row: Row, fields: tuple[str, ...], chat: bool) -> dict:
    chosen, rejected = _text_or_messages(row, "chosen"), _text_or_messages(row, "rejected")
    if type(chosen) is not type(rejected):
        raise DataError(
            "chosen and rejected must both be strings or both be message lists",
            path=row.path,
            line=row.line,
            field="rejected",
        )
    if "prompt" in fields:
        prompt = _text_or_messages(row, "prompt")
        if isinstance(prompt, str) and isinstance(chosen, str) and chat:
            assistant = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
            return {"prompt": _user_turn(row, prompt), "chosen": assistant(chosen), "rejected": assistant(rejected)}
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    # Implicit prompt: the longest shared prefix of chosen and rejected, as TRL's extract_prompt defines it.
    from trl.data_utils import extract_prompt

    columns = extract_prompt({"chosen": chosen, "rejected": rejected})
    if not columns["prompt"]:
        raise DataError(
            "chosen and rejected share no prompt; use {prompt, chosen, rejected} rows",
            path=row.path,
            line=row.line,
            field="chosen",
        )
    return columns

"""Every accepted field layout loads and maps to the right TRL columns; bad rows are named by file:line."""

import json

import pytest

from forge_trl.config import DATA_LAYOUTS
from forge_trl.data.formats import LAYOUTS, to_trl_columns
from forge_trl.data.rows import Row, read_rows
from forge_trl.errors import DataError


def write_jsonl(path, rows, *, raw=None):
    path.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def convert(layout, data, chat=True):
    return to_trl_columns(Row(data, "rows.jsonl", 7), layout, chat)


def test_config_names_every_layout_the_formats_accept():
    # `data.layout`, `forge-trl convert layout=` and the row validators all name the same layouts, in one order.
    assert DATA_LAYOUTS == tuple(LAYOUTS)


USER = lambda text: [{"role": "user", "content": text}]  # noqa: E731
ASSISTANT = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"text": "hello world"}, {"text": "hello world"}),
        ({"prompt": "Q?", "response": "A"}, {"prompt": USER("Q?"), "completion": ASSISTANT("A")}),
        ({"instruction": "Q?", "response": "A"}, {"prompt": USER("Q?"), "completion": ASSISTANT("A")}),
        (
            {"instruction": "Sum", "input": "1 2", "response": "3"},
            {"prompt": USER("Sum\n\n1 2"), "completion": ASSISTANT("3")},
        ),
        ({"prompt": "Q?", "completion": "A"}, {"prompt": USER("Q?"), "completion": ASSISTANT("A")}),
        (
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "A"},
                ]
            },
            {"prompt": [{"role": "system", "content": "S"}, *USER("Q?")], "completion": ASSISTANT("A")},
        ),
    ],
)
def test_sft_layouts_map_to_trl_columns(data, expected):
    assert convert("sft", data) == expected


def test_sft_without_chat_template_joins_plain_strings():
    assert convert("sft", {"prompt": "Q?", "response": "A"}, chat=False) == {"prompt": "Q?", "completion": "A"}


def test_preference_layouts():
    explicit = convert("prompted_preference", {"prompt": "Q?", "chosen": "good", "rejected": "bad"})
    assert explicit == {"prompt": USER("Q?"), "chosen": ASSISTANT("good"), "rejected": ASSISTANT("bad")}
    implicit = convert("preference", {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"})
    assert implicit == {"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"}  # TRL splits at a word boundary
    conversation = convert(
        "preference", {"chosen": USER("Q?") + ASSISTANT("good"), "rejected": USER("Q?") + ASSISTANT("bad")}
    )
    assert conversation == {"prompt": USER("Q?"), "chosen": ASSISTANT("good"), "rejected": ASSISTANT("bad")}
    assert convert("prompt_only", {"prompt": "Q?"}) == {"prompt": USER("Q?")}


@pytest.mark.parametrize(
    "layout, data, field, fragment",
    [
        ("sft", {"prompt": "Q?"}, "response", "missing field 'response'"),
        ("prompted_preference", {"prompt": "Q?", "chosen": "a"}, "rejected", "missing field 'rejected'"),
        ("sft", {"prompt": "Q?", "response": 3}, "response", "expected a string, got int"),
        ("prompted_preference", {"prompt": "Q?", "chosen": " ", "rejected": "b"}, "chosen", "is empty"),
        ("sft", {"messages": [{"role": "user", "content": "Q?"}]}, "messages", "last message must be an assistant"),
        ("sft", {"messages": [{"role": "robot", "content": "Q?"}]}, "messages[0]", "role 'robot'"),
    ],
)
def test_bad_rows_name_file_line_and_field(layout, data, field, fragment):
    with pytest.raises(DataError) as info:
        convert(layout, data)
    message = str(info.value)
    assert message.startswith(f"rows.jsonl:7 field '{field}'")
    assert fragment in message


def test_reader_accepts_bom_crlf_and_blank_lines(tmp_path):
    raw = '\ufeff{"text": "a"}\r\n\r\n{"text": "b"}\r\n\n'
    rows = read_rows(write_jsonl(tmp_path / "x.jsonl", None, raw=raw))
    assert [(r.data["text"], r.line) for r in rows] == [("a", 1), ("b", 3)]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ('{"text": "a"}\n{"text": "b"\n', "x.jsonl:2: invalid JSON"),
        ('["text"]\n', "x.jsonl:1: expected a JSON object"),
        ("", "x.jsonl: no rows"),
    ],
)
def test_reader_errors(tmp_path, raw, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        read_rows(write_jsonl(tmp_path / "x.jsonl", None, raw=raw))


def test_dataset_directory_rows(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "Q?", "response": "A"}]).save_to_disk(str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    assert convert("sft", rows[0].data) == {"prompt": USER("Q?"), "completion": ASSISTANT("A")}

"""`data.layout` names the row layout; `data.task`, its old name, still works with one warning line. And the one
dataset-directory reader (forge_trl/data/rows.py), DatasetDict splits included."""

from __future__ import annotations

import logging

import pytest

from forge_trl.commands.compose import compose
from forge_trl.config import to_typed
from forge_trl.data.rows import read_rows
from forge_trl.errors import ConfigError, DataError

DEPRECATION = "data.task is deprecated; use data.layout"


def deprecation_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "forge_trl" and DEPRECATION in r.getMessage()]


def test_data_layout_on_the_command_line(caplog):
    with caplog.at_level(logging.WARNING, logger="forge_trl"):
        cfg = to_typed(compose(["task=sft", "data=jsonl", "data.path=rows.jsonl", "data.layout=sft"]))
    assert cfg.data.layout == "sft" and cfg.data.task is None
    assert not deprecation_lines(caplog)


def test_data_task_still_works_with_one_warning_line(caplog):
    from forge_trl.config import warn_deprecated

    warn_deprecated.cache_clear()  # once per process: another test may have said it already
    with caplog.at_level(logging.WARNING, logger="forge_trl"):
        for _ in range(2):  # the CLI checks the config before Hydra runs it: still one line
            cfg = to_typed(compose(["task=sft", "data=jsonl", "data.path=rows.jsonl", "data.task=sft"]))
    assert cfg.data.layout == "sft" and cfg.data.task is None
    assert deprecation_lines(caplog) == [DEPRECATION]


def test_the_demo_data_groups_set_the_layout():
    assert to_typed(compose(["task=dpo", "data=demo_preference"])).data.layout == "prompted_preference"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.task=sft", "data.layout=text"], "data.task=sft contradicts data.layout=text"),
        (["data.layout=chat"], "data.layout: expected one of text|sft|"),
        (["data.task=chat"], "data.task: expected one of text|sft|"),
    ],
)
def test_bad_layouts_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        to_typed(compose(["task=sft", "data=jsonl", "data.path=rows.jsonl", *overrides]))


def test_agreeing_task_and_layout_are_accepted():
    cfg = to_typed(compose(["task=sft", "data=jsonl", "data.path=rows.jsonl", "data.task=sft", "data.layout=sft"]))
    assert cfg.data.layout == "sft"


def test_one_reader_for_dataset_directory_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {"train": Dataset.from_list([{"prompt": "a"}]), "test": Dataset.from_list([{"prompt": "b"}])}
    ).save_to_disk(str(tmp_path / "both"))
    assert [r.data["prompt"] for r in read_rows(tmp_path / "both")] == ["a"]  # train by default
    assert [(r.data["prompt"], r.line) for r in read_rows(tmp_path / "both", split="test")] == [("b", 1)]
    with pytest.raises(ConfigError, match="has splits train, test"):
        read_rows(tmp_path / "both", split="valid")

    DatasetDict({"valid": Dataset.from_list([{"prompt": "c"}])}).save_to_disk(str(tmp_path / "only"))
    assert [r.data["prompt"] for r in read_rows(tmp_path / "only")] == ["c"]  # the only split

    DatasetDict({"a": Dataset.from_list([{"prompt": "x"}]), "b": Dataset.from_list([{"prompt": "y"}])}).save_to_disk(
        str(tmp_path / "neither")
    )
    with pytest.raises(DataError, match="none is 'train'"):
        read_rows(tmp_path / "neither")

    Dataset.from_list([{"prompt": "d"}]).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ConfigError, match="without splits"):
        read_rows(tmp_path / "single", split="train")
    (tmp_path / "rows.jsonl").write_text('{"prompt": "e"}\n')
    with pytest.raises(ConfigError, match="no splits"):
        read_rows(tmp_path / "rows.jsonl", split="train")

"""`python -m forge_trl.convert` maps foreign fields onto forge's layouts; `python -m forge_trl.preprocess` builds a
tokenized cache that trains exactly like the raw rows and is refused when it was built for another setup."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from forge_trl.commands import convert as convert_cli
from forge_trl.commands import preprocess as preprocess_cli
from forge_trl.config import DataConfig
from forge_trl.data.dataset import prepare_data
from forge_trl.data.formats import to_trl_columns
from forge_trl.data.rows import read_rows
from forge_trl.data.token_cache import METADATA_FILE, build_cache, is_pretokenized_preference
from forge_trl.errors import ConfigError, DataError

QA_ROWS = [
    {
        "question": f"What is {i} plus {i}?",
        "answer": f"It is {2 * i}.",
        "source": "quiz",
        **({"sys": "Be brief."} if i % 2 else {}),
    }
    for i in range(8)
]
PREFERENCE_ROWS = [
    {"prompt": f"Name a colour number {i}.", "chosen": f"Blue {i}.", "rejected": f"I will not say {i}."}
    for i in range(8)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer():
    from forge_trl.models.loading import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source("forge-tiny").tokenizer_path)


# --- convert ----------------------------------------------------------------------------------------------------------


def test_convert_round_trip_through_forge_loaders(tmp_path):
    source = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    out = tmp_path / "sft.jsonl"
    assert (
        convert_cli.main(
            [f"input={source}", f"out={out}", "map=question:prompt,answer:response", "map=sys?:system", "layout=sft"]
        )
        == 0
    )

    rows = read_rows(out)
    assert [r.data["prompt"] for r in rows] == [r["question"] for r in QA_ROWS]
    assert all(r.data["source"] == "quiz" for r in rows)  # unmapped fields pass through
    assert to_trl_columns(rows[1], "sft", chat=True) == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QA_ROWS[1]["question"]}],
        "completion": [{"role": "assistant", "content": QA_ROWS[1]["answer"]}],
    }
    assert "system" not in rows[0].data  # the optional source was absent there

    back = tmp_path / "back.jsonl"
    assert convert_cli.main([f"input={out}", f"out={back}", "map=prompt:question,response:answer,system?:sys"]) == 0
    assert read_jsonl(back) == QA_ROWS


def test_convert_reads_a_dataset_directory_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_list(PREFERENCE_ROWS[:5]),
            "test": Dataset.from_list(
                [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in PREFERENCE_ROWS[5:]]
            ),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "test.jsonl"
    assert (
        convert_cli.main(
            [
                f"input={tmp_path / 'ds'}",
                f"out={out}",
                "split=test",
                "drop_unmapped=true",
                "map=q:prompt,good:chosen,bad:rejected",
                "layout=prompted_preference",
            ]
        )
        == 0
    )
    assert read_jsonl(out) == PREFERENCE_ROWS[5:]

    with pytest.raises(ConfigError, match="has splits train, test"):
        convert_cli.convert(convert_cli.parse_args([f"input={tmp_path / 'ds'}", f"out={out}x", "split=valid"]))


def test_bad_field_map_names_the_field_and_line_and_leaves_out_untouched(tmp_path):
    rows = [*QA_ROWS[:2], {"question": "Q?", "reply": "A"}]
    source = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "sft.jsonl"
    out.write_text("previous\n")
    args = [f"input={source}", f"out={out}", "map=question:prompt,answer:response", "overwrite=true"]
    with pytest.raises(DataError) as info:
        convert_cli.convert(convert_cli.parse_args(args))
    assert str(info.value).startswith(f"{source}:3 field 'answer': missing field 'answer'")
    assert "reply" in str(info.value)  # what the row does have
    assert out.read_text() == "previous\n"  # atomic: a failed conversion leaves the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl", "sft.jsonl"]  # no temp file left behind

    with pytest.raises(ConfigError, match="already exists"):
        convert_cli.convert(convert_cli.parse_args(args[:-1]))


def test_layout_check_names_the_input_field_behind_a_bad_value(tmp_path):
    source = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": 42}])
    with pytest.raises(DataError) as info:
        convert_cli.convert(
            convert_cli.parse_args(
                [f"input={source}", f"out={tmp_path / 'o.jsonl'}", "map=question:prompt,answer:response", "layout=sft"]
            )
        )
    assert str(info.value) == f"{source}:1 field 'response': expected a string, got int (mapped from 'answer')"


def test_convert_cli_prints_one_line_and_exits_2(tmp_path):
    source = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forge_trl.convert",
            f"input={source}",
            f"out={tmp_path / 'o.jsonl'}",
            "map=question:prompt",
            "layout=sft",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"forge_trl: data error: {source}:1 field 'response': missing field 'response'; a sft row "
        "needs {messages} or {prompt, response} or {instruction, response} or {prompt, completion} or "
        "{text} (row has: answer, prompt, source); map one of your fields to it, e.g. "
        "map=<field>:response"
    ]
    assert not (tmp_path / "o.jsonl").exists()


# --- preprocess -------------------------------------------------------------------------------------------------------


def build(source, cache, tokenizer, *, task="sft", layout="sft", max_length=64):
    """Build a cache from raw rows; returns (build result, the DataConfig that loads the cache)."""
    raw = DataConfig(path=str(source), format="raw", layout=layout, max_length=max_length)
    result = build_cache(
        str(source), cache, task_name=task, layout=layout, data=raw, tokenizer=tokenizer, tokenizer_source="forge-tiny"
    )
    return result, DataConfig(path=str(cache), format="processed", layout=layout, max_length=max_length)


def sft_source(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["question"], "response": r["answer"]} for r in QA_ROWS])


def test_preprocess_round_trip_token_ids_match_the_tokenizer(tmp_path, tokenizer):
    source = sft_source(tmp_path)
    result, data = build(source, tmp_path / "cache", tokenizer)
    assert (result.rows, result.rows_read, result.filtered_empty) == (8, 8, 0)

    dataset = prepare_data("sft", data, tokenizer).train
    assert dataset.column_names == ["input_ids", "completion_mask"]
    for raw, cached in zip(QA_ROWS, dataset):
        prompt = [{"role": "user", "content": raw["question"]}]
        full = prompt + [{"role": "assistant", "content": raw["answer"]}]
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(full, tokenize=True)["input_ids"]
        assert cached["input_ids"] == full_ids
        assert cached["completion_mask"] == [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
        completion = [token for token, in_loss in zip(full_ids, cached["completion_mask"]) if in_loss]
        assert tokenizer.decode(completion).startswith(raw["answer"])


def test_plain_text_rows_get_eos_like_trl(tmp_path, tokenizer):
    source = sft_source(tmp_path)
    raw = DataConfig(path=str(source), format="raw", layout="sft", max_length=64, chat_template=False)
    build_cache(
        str(source),
        tmp_path / "cache",
        task_name="sft",
        layout="sft",
        data=raw,
        tokenizer=tokenizer,
        tokenizer_source="forge-tiny",
    )
    loaded = DataConfig(
        path=str(tmp_path / "cache"), format="processed", layout="sft", max_length=64, chat_template=False
    )
    first = prepare_data("sft", loaded, tokenizer).train[0]
    prompt, response = QA_ROWS[0]["question"], QA_ROWS[0]["answer"]
    assert first["input_ids"] == tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    assert sum(first["completion_mask"]) == len(first["input_ids"]) - len(tokenizer(prompt)["input_ids"])


def test_max_rows_draws_the_same_rows_as_on_raw_data(tmp_path, tokenizer):
    from forge_trl.data.token_cache import tokenize_sft_row

    rows = [
        {"prompt": f"Question {i} " + ("pad " * 60 if i == 3 else ""), "response": f"Answer {i}"} for i in range(12)
    ]
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    _, cached = build(source, tmp_path / "cache", tokenizer, max_length=40)
    raw = DataConfig(path=str(source), format="raw", layout="sft", max_length=40, max_rows=6)
    expected = [tokenize_sft_row(row, tokenizer) for row in prepare_data("sft", raw, tokenizer).train]
    cached.max_rows = 6
    assert list(prepare_data("sft", cached, tokenizer).train) == expected
    assert len(expected) == 5  # seed 0 draws row 3, whose prompt fills max_length; both sides drop it


def test_preprocess_applies_the_empty_label_filter(tmp_path, tokenizer):
    rows = [{"prompt": r["question"], "response": r["answer"]} for r in QA_ROWS]
    rows[2]["prompt"] = "the sky is blue and the grass is green " * 12 + rows[2]["prompt"]
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    result, data = build(source, tmp_path / "cache", tokenizer, max_length=40)
    assert (result.rows, result.filtered_empty) == (7, 1)
    prepared = prepare_data("sft", data, tokenizer)
    assert len(prepared.train) == 7 and prepared.stats["filtered_empty"] == 1


def test_stale_cache_names_what_differs(tmp_path, tokenizer):
    source = sft_source(tmp_path)
    cache = tmp_path / "cache"
    _, built = build(source, cache, tokenizer)

    with pytest.raises(DataError, match=r"stale processed data: built for data.max_length 64 \(this run: 128\)"):
        prepare_data("sft", DataConfig(path=str(cache), format="processed", layout="sft", max_length=128), tokenizer)
    with pytest.raises(DataError, match=r"chat template #\w+ \(this run: none\)"):
        prepare_data(
            "sft",
            DataConfig(path=str(cache), format="processed", layout="sft", max_length=64, chat_template=False),
            tokenizer,
        )

    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["<|tool|>"])
    with pytest.raises(DataError) as info:
        prepare_data("sft", built, other)
    message = str(info.value)
    assert message.startswith(f"{cache}: stale processed data: built for tokenizer #")
    named = message.split("; rerun")[0]
    assert "max_length" not in named and "chat template" not in named  # only what differs is named

    with pytest.raises(DataError, match="set data.format=processed"):
        prepare_data("sft", DataConfig(path=str(cache), format="raw", layout="sft", max_length=64), tokenizer)


def test_preprocess_cli_reuses_an_up_to_date_cache_and_protects_a_different_one(tmp_path, capsys):
    source = sft_source(tmp_path)
    cache = tmp_path / "cache"
    overrides = ["task=sft", "data=jsonl", f"data.path={source}", "data.layout=sft", "data.max_length=64"]
    assert preprocess_cli.main([f"out={cache}", *overrides]) == 0
    first = (cache / METADATA_FILE).stat().st_mtime_ns
    assert preprocess_cli.main([f"out={cache}", *overrides]) == 0
    assert "8 rows up to date" in capsys.readouterr().out
    assert (cache / METADATA_FILE).stat().st_mtime_ns == first

    assert preprocess_cli.main([f"out={cache}", *overrides, "data.max_length=32"]) == 2
    assert "already exists; pass overwrite=true" in capsys.readouterr().err
    assert preprocess_cli.main([f"out={cache}", *overrides, "data.max_length=32", "overwrite=true"]) == 0
    assert json.loads((cache / METADATA_FILE).read_text())["key"]["max_length"] == 32

    assert preprocess_cli.main([f"out={tmp_path / 'orpo'}", "task=orpo"]) == 2
    assert "preprocess does not support task=orpo" in capsys.readouterr().err


def test_preference_cache_has_dpo_columns(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "pref.jsonl", PREFERENCE_ROWS)
    _, data = build(source, tmp_path / "cache", tokenizer, task="dpo", layout="prompted_preference")
    train = prepare_data("prompted_preference", data, tokenizer, task_name="dpo").train
    assert train.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"] and is_pretokenized_preference(train)
    row = train[0]
    prompt = [{"role": "user", "content": PREFERENCE_ROWS[0]["prompt"]}]
    chosen = prompt + [{"role": "assistant", "content": PREFERENCE_ROWS[0]["chosen"]}]
    assert row["prompt_ids"] + row["chosen_ids"] == tokenizer.apply_chat_template(chosen, tokenize=True)["input_ids"]

    with pytest.raises(DataError, match="stale processed data: built for trainer dpo \\(this run: sft\\)"):
        prepare_data("prompted_preference", data, tokenizer, task_name="sft")


# --- the acceptance test: a processed dataset trains exactly like the raw rows --------------------------------------


@pytest.mark.parametrize(
    "task, layout, rows",
    [
        ("sft", "sft", [{"prompt": r["question"], "response": r["answer"]} for r in QA_ROWS]),
        ("dpo", "prompted_preference", PREFERENCE_ROWS),
    ],
)
def test_processed_dataset_trains_identically_to_raw(task, layout, rows, tmp_path):
    from tests.injection_support import train_in_process

    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    common = [f"task={task}", "data=jsonl", f"data.layout={layout}", "data.max_length=48", "task.learning_rate=1e-2"]
    cache = tmp_path / "cache"
    assert preprocess_cli.main([f"out={cache}", *common, f"data.path={source}"]) == 0

    _, _, raw = train_in_process(tmp_path / "raw", *common, f"data.path={source}", steps=2)
    _, _, processed = train_in_process(
        tmp_path / "processed", *common, "data.format=processed", f"data.path={cache}", steps=2
    )
    raw_steps, processed_steps = step_metrics(raw), step_metrics(processed)
    assert len(raw_steps) == 2 and raw_steps[0] != raw_steps[1]  # two real steps on different batches
    # DPO's loss is exactly ln 2 while a fresh LoRA equals the reference, so its log-probs carry the comparison.
    assert set(raw_steps[0]) >= {"loss", "grad_norm", "num_tokens"}
    assert task != "dpo" or set(raw_steps[0]) >= {"logps/chosen", "logps/rejected"}
    for raw_step, processed_step in zip(raw_steps, processed_steps, strict=True):
        assert processed_step == pytest.approx(raw_step, rel=1e-6, abs=1e-7)


def step_metrics(records):
    """Per optimizer step, the logged values that depend on the token ids and masks the trainer saw."""
    keys = ("loss", "grad_norm", "num_tokens", "logps/chosen", "logps/rejected", "mean_token_accuracy")
    return [{key: r[key] for key in keys if key in r} for r in records if "loss" in r]

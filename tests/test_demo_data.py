"""The demo suite: deterministic, leak-free splits, held-out facts in the pretrain corpus, a strict checker,
well-formed preference pairs, and a cache that is reused rather than rewritten."""

from __future__ import annotations

import json
import re

import pytest

from forge_trl.data.demo_suite import (
    DEMO_FILES,
    FILE_NAMES,
    answer_first,
    build_items,
    check_answer,
    demo_dir,
    ensure_demo_suite,
    generate_demo_suite,
    split_items,
)

TRAIN_FILES = ("sft", "preference", "prompt_only")
HELDOUT_FILES = ("sft_heldout", "preference_heldout", "prompt_only_heldout")


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return generate_demo_suite(tmp_path_factory.mktemp("demo"))


def test_generation_is_deterministic(suite, tmp_path):
    again = generate_demo_suite(tmp_path / "again")
    assert set(again) == set(suite) == set(FILE_NAMES)
    for stem, path in suite.items():
        assert again[stem].read_bytes() == path.read_bytes(), stem
    assert not list(tmp_path.glob("again/*.tmp"))


def test_demo_files_point_at_generated_stems(suite):
    assert set(DEMO_FILES.values()) <= set(suite)
    assert DEMO_FILES["text"] == "pretrain" and DEMO_FILES["prompted_preference"] == "preference"


def test_row_shapes_and_sizes(suite):
    pretrain = read(suite["pretrain"])
    assert 2000 <= len(pretrain) <= 6000
    assert all(20 <= len(row["text"].split()) <= 80 for row in pretrain)
    for row in read(suite["sft_heldout"]):
        assert row["response"] == row["answer"] and check_answer(row["response"], row["answer"])
    train = read(suite["sft"])
    assert all(answer_first(row["response"], row["answer"]) for row in train)
    bare = sum(check_answer(row["response"], row["answer"]) for row in train) / len(train)
    assert 0.6 < bare < 0.8  # the rest ramble after the answer (SFT_RAMBLING_SHARE)
    for stem in TRAIN_FILES + HELDOUT_FILES:
        rows = read(suite[stem])
        assert rows and all(row["prompt"].strip() and row["answer"] for row in rows)
        assert {row["family"] for row in rows} == {"add", "opposite", "next", "color"}, stem


def test_heldout_prompts_never_train(suite):
    train_prompts = {row["prompt"] for stem in TRAIN_FILES for row in read(suite[stem])}
    heldout_prompts = {row["prompt"] for stem in HELDOUT_FILES for row in read(suite[stem])}
    assert heldout_prompts and not heldout_prompts & train_prompts
    # Split by item, not phrasing: no phrasing of a held-out item is a training prompt either.
    _, heldout = split_items(build_items())
    assert not {q for item in heldout for q in item.questions} & train_prompts


def test_heldout_facts_are_in_pretrain(suite):
    text = "\n".join(row["text"] for row in read(suite["pretrain"]))
    by_question = {q: item for item in build_items() for q in item.questions}
    for row in read(suite["sft_heldout"]):
        item = by_question[row["prompt"]]
        assert item.answer == row["answer"]
        for fact in item.facts:
            assert fact in text, fact
        assert any(f"Question: {q} Answer: {item.answer}." in text for q in item.questions), row


def test_corpus_covers_every_file(suite):
    corpus = set(suite["corpus"].read_text(encoding="utf-8").splitlines())
    for stem in ("pretrain", *TRAIN_FILES, *HELDOUT_FILES):
        for row in read(suite[stem]):
            for key in ("text", "prompt", "response", "chosen", "rejected"):
                assert key not in row or row[key] in corpus


@pytest.mark.parametrize(
    "response,answer",
    [
        ("7", "7"),
        (" 7. ", "7"),
        ("7\nbecause 3 plus 4", "7"),
        ("cold", "cold"),
        ("Cold.", "cold"),
        ("cold\nIt is cold.", "cold"),
        ("tuesday", "Tuesday"),
        ("blue!", "blue"),
        ("7, I think", "7"),
    ],
)
def test_answer_first_accepts(response, answer):
    assert answer_first(response, answer)


@pytest.mark.parametrize(
    "response,answer",
    [
        ("17", "7"),
        ("71", "7"),
        ("7.5", "7"),
        ("coldness", "cold"),
        ("cold-blooded", "cold"),
        ("hot", "cold"),
        ("", "cold"),
        ("It is cold.", "cold"),
        ("Well, I believe the answer might be 7.", "7"),
    ],
)
def test_answer_first_rejects(response, answer):
    assert not answer_first(response, answer)


@pytest.mark.parametrize(
    "response,answer,ok",
    [
        ("7", "7", True),
        (" 7. ", "7", True),
        ("Cold.", "cold", True),
        ("tuesday", "Tuesday", True),
        ("7, I think", "7", False),
        ("cold. Well, let me think", "cold", False),
        ("17", "7", False),
        ("It is 7.", "7", False),
        ("", "7", False),
        ("...", "7", False),
    ],
)
def test_checker_wants_the_bare_answer(response, answer, ok):
    assert check_answer(response, answer) is ok


def test_preference_pairs(suite):
    for stem in ("preference", "preference_heldout"):
        rows = read(suite[stem])
        kinds = {"wrong": 0, "rambling": 0}
        for row in rows:
            assert row["chosen"] == row["answer"] != row["rejected"]
            assert not check_answer(row["rejected"], row["answer"])
            if len(row["rejected"].split()) == 1:
                kinds["wrong"] += 1
            else:
                assert re.search(rf"\b{re.escape(row['answer'])}\b", row["rejected"]), row
                kinds["rambling"] += 1
        assert 0.3 <= kinds["wrong"] / len(rows) <= 0.7, (stem, kinds)


def test_ensure_demo_suite_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_TRL_CACHE", str(tmp_path))
    target = demo_dir()
    assert target.parent == tmp_path and re.fullmatch(r"demo-[0-9a-f]{12}", target.name)
    assert demo_dir(seed=1) != target
    first = ensure_demo_suite()
    assert all(path.parent == target and path.is_file() for path in first.values())
    mtimes = {stem: path.stat().st_mtime_ns for stem, path in first.items()}
    second = ensure_demo_suite()
    assert second == first
    assert {stem: path.stat().st_mtime_ns for stem, path in second.items()} == mtimes
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp dirs left behind
    # An incomplete suite is regenerated in full.
    first["sft"].unlink()
    third = ensure_demo_suite()
    fresh = generate_demo_suite(tmp_path / "fresh")
    assert all(third[stem].read_bytes() == fresh[stem].read_bytes() for stem in fresh)


def test_heldout_prompts_never_appear_in_pretrain_chat_transcripts(suite):
    from forge_trl.data.demo_suite import ASSISTANT_TOKEN, USER_TOKEN

    corpus = " ".join(row["text"] for row in read(suite["pretrain"]))
    assert corpus.count(USER_TOKEN) > 1000 and ASSISTANT_TOKEN in corpus
    for row in read(suite["sft_heldout"]):
        assert f"{USER_TOKEN}{row['prompt']}" not in corpus, row["prompt"]

"""The built-in demo suite: a deterministic synthetic instruction set with a programmatic answer checker.

The demo pretrains a ~1M-parameter random-init model on CPU for about a minute, then LoRA-SFTs and ORPOs it.
A model that small cannot learn reasoning in that time, so every task is a short lookup (one word or number)
of a fact that the pretraining corpus states, in several forms, for *all* items, held-out ones included.
Pretraining teaches the facts, and also shows chat transcripts in which the assistant rambles before giving
the answer, so the base model can read the chat format but answers in the wrong style. SFT only has to teach
the bare-answer format, which is why it transfers to held-out questions. Items (not phrasings) are split, and
the transcripts ask held-out items only in wordings other than their held-out one, so no held-out question is
ever a training prompt.

Families: `add` (0..9 plus 0..9), `opposite` (40 antonym pairs, both directions), `next` (days, months,
number words, letters) and `color` (everyday objects). Everything is pure stdlib and seeded, so the same
seed gives byte-identical files, and the cache directory is keyed on the generator version and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from pathlib import Path
from typing import NamedTuple

from forge_trl.files import write_dir_atomically, write_text_atomically

# Bump whenever the generated content changes, so cached suites (and models built from them) are rebuilt.
GENERATOR_VERSION = "4"
HELDOUT_FRACTION = 0.2
PRETRAIN_PASSES = 16  # each pass states every fact in four forms; ~5,000 rows in total
# Like real SFT sets, the demo's is mixed in style: this share of training responses ramble after the answer.
# SFT then mostly answers bare (so the checker passes) but still rates rambling as likely, which is what the
# preference stage is for.
SFT_RAMBLING_SHARE = 0.3

# The chat format of the built-in tokenizer (forge_trl.models.tiny builds its template from these tokens).
USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN = "<|user|>", "<|assistant|>", "<|end|>"

# Layout (`data.layout`) -> file stem of the demo data the training code reads for that layout.
DEMO_FILES = {
    "text": "pretrain",
    "sft": "sft",
    "preference": "preference",
    "prompted_preference": "preference",
    "prompt_only": "prompt_only",
}
FILE_NAMES = {
    stem: f"{stem}.jsonl"
    for stem in (
        "pretrain",
        "sft",
        "sft_heldout",
        "preference",
        "preference_heldout",
        "prompt_only",
        "prompt_only_heldout",
    )
}
FILE_NAMES["corpus"] = "corpus.txt"

OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("left", "right"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("open", "closed"),
    ("wet", "dry"),
    ("old", "young"),
    ("light", "dark"),
    ("hard", "soft"),
    ("high", "low"),
    ("full", "empty"),
    ("early", "late"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("long", "short"),
    ("thick", "thin"),
    ("in", "out"),
    ("near", "far"),
    ("clean", "dirty"),
    ("day", "night"),
    ("black", "white"),
    ("good", "bad"),
    ("true", "false"),
    ("yes", "no"),
    ("win", "lose"),
    ("buy", "sell"),
    ("push", "pull"),
    ("first", "last"),
    ("inside", "outside"),
    ("above", "below"),
    ("front", "back"),
    ("sweet", "sour"),
    ("wide", "narrow"),
    ("deep", "shallow"),
    ("give", "take"),
    ("laugh", "cry"),
    ("north", "south"),
]
COLORS = [
    ("the sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("a banana", "yellow"),
    ("a lemon", "yellow"),
    ("coal", "black"),
    ("blood", "red"),
    ("a tomato", "red"),
    ("a carrot", "orange"),
    ("the sun", "yellow"),
    ("milk", "white"),
    ("a frog", "green"),
    ("chocolate", "brown"),
    ("a strawberry", "red"),
    ("a lime", "green"),
    ("a pumpkin", "orange"),
    ("the sea", "blue"),
    ("a crow", "black"),
    ("a flamingo", "pink"),
    ("a pig", "pink"),
    ("an eggplant", "purple"),
    ("a grape", "purple"),
    ("wood", "brown"),
    ("an elephant", "gray"),
    ("a cloud", "white"),
    ("a blueberry", "blue"),
    ("a leaf", "green"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NUMBER_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
LETTERS = list(string.ascii_lowercase)

# Question phrasings and prose fact forms per family; `{s}` is the subject, `{t}` the second operand, `{a}` the answer.
QUESTIONS = {
    "add": ["What is {s} plus {t}?", "Add {s} and {t}.", "What is the sum of {s} and {t}?"],
    "opposite": ["What is the opposite of {s}?", "Give the opposite of {s}.", "Which word is the opposite of {s}?"],
    "next": ["What comes after {s}?", "What follows {s}?", "Which one comes next after {s}?"],
    "color": ["What color is {s}?", "Which color is {s}?", "Tell me the color of {s}."],
}
FACTS = {
    "add": ["{s} plus {t} is {a}.", "the sum of {s} and {t} is {a}."],
    "opposite": ["the opposite of {s} is {a}.", "{a} is the opposite of {s}."],
    "next": ["after {s} comes {a}.", "{a} comes after {s}."],
    "color": ["{s} is {a}.", "the color of {s} is {a}."],
}
# Answer-first rambling: the pretraining transcripts answer like this (so the base model knows the facts in chat
# form but does not stop), and half the preference rejections are like this (so ORPO prefers the bare answer).
RAMBLING = [
    "{a}. Well, let me think about that for a moment, because I am not completely sure about it.",
    "{a}, I would say, although after thinking it over for a while I could still be wrong.",
    "{a}. There are many things to consider here, and that is only my best guess.",
    "{a}, probably. That is an interesting question, and you may want to check it yourself.",
    "{a}. If I remember correctly, that is what I learned about this a long time ago.",
]
FILLER = [
    "a week has seven days.",
    "a year has twelve months.",
    "the alphabet has many letters.",
    "we can count from one to twenty.",
    "the children play in the garden.",
    "my friend has a small dog.",
    "the cat sleeps on the warm mat.",
    "we eat bread and soup for dinner.",
    "the teacher reads a story to the class.",
    "birds sing in the trees every morning.",
    "the river runs past the old house.",
    "she writes a letter to her mother.",
    "he rides his bike to school.",
    "the farmer grows food in the field.",
    "we walk to the park on weekends.",
    "the baker makes fresh bread.",
    "the train leaves the station at noon.",
    "I like to draw pictures.",
    "the little boat floats on the lake.",
    "they sing songs together.",
    "the shop sells fruit and vegetables.",
    "numbers help us count things.",
    "words help us talk to each other.",
    "a question asks for an answer.",
]


class Item(NamedTuple):
    """One fact: its family, the question phrasings that ask for it, prose statements of it, and wrong answers."""

    family: str
    answer: str
    questions: tuple[str, ...]
    facts: tuple[str, ...]
    distractors: tuple[str, ...]


def _item(family: str, subject: str, answer: str, distractors, other: str = "") -> Item:
    fill = dict(s=subject, t=other, a=answer)
    wrong = tuple(sorted({d for d in distractors if d not in (answer, subject)}))
    return Item(
        family,
        answer,
        tuple(q.format(**fill) for q in QUESTIONS[family]),
        tuple(f.format(**fill) for f in FACTS[family]),
        wrong,
    )


def build_items() -> list[Item]:
    """Every item of every family, in a fixed order (about 270 in all)."""
    items = [
        _item("add", str(a), str(a + b), [str(a + b + d) for d in (-2, -1, 1, 2) if a + b + d >= 0], str(b))
        for a in range(10)
        for b in range(10)
    ]
    words = [w for pair in OPPOSITES for w in pair]
    items += [_item("opposite", x, y, words) for p, q in OPPOSITES for x, y in ((p, q), (q, p))]
    for seq, cyclic, prefix in (
        (DAYS, True, ""),
        (MONTHS, True, ""),
        (NUMBER_WORDS, False, ""),
        (LETTERS, False, "the letter "),
    ):
        n = len(seq)
        for i in range(n if cyclic else n - 1):
            near = [seq[(i + d) % n] for d in (-2, -1, 2, 3) if cyclic or 0 <= i + d < n]
            items.append(_item("next", prefix + seq[i], seq[(i + 1) % n], near))
    palette = sorted({c for _, c in COLORS})
    items += [_item("color", obj, color, palette) for obj, color in COLORS]
    return items


def split_items(items: list[Item], seed: int = 0) -> tuple[list[Item], list[Item]]:
    """(train, held-out), about 80/20 within each family, so every family is evaluated on unseen items."""
    rng = random.Random(f"{seed}:split")
    train, heldout = [], []
    for family in QUESTIONS:
        members = [it for it in items if it.family == family]
        rng.shuffle(members)
        n_held = round(len(members) * HELDOUT_FRACTION)
        heldout += members[:n_held]
        train += members[n_held:]
    return train, heldout


def check_answer(response: str, answer: str) -> bool:
    """The demo's task checker: the response is the bare answer, ignoring case, surrounding whitespace and
    trailing punctuation. "7." passes; "17", "7, I think" and "It is 7." do not."""
    text = response.strip().rstrip(string.punctuation + string.whitespace).lower()
    return bool(text) and text == answer.strip().lower()


def answer_first(response: str, answer: str) -> bool:
    """Looser than `check_answer`: the response starts with the answer as a whole word ("7, I think" and
    "cold\n..." pass; "17", "7.5" and "coldness" do not). It shows whether a model knows the fact at all."""
    text, ans = response.strip().lower(), answer.strip().lower()
    if not ans or not text.startswith(ans):
        return False
    rest = text[len(ans) :]
    if not rest.rstrip(string.punctuation + string.whitespace):
        return True
    # A word continues through letters/digits, and through - ' . , when they join two word characters (7.5).
    return not (rest[0].isalnum() or rest[0] == "_" or (rest[0] in "-'.," and rest[1:2].isalnum()))


def render_chat(user: str, assistant: str) -> str:
    """One exchange in the built-in tokenizer's chat format."""
    return f"{USER_TOKEN}{user}{END_TOKEN}{ASSISTANT_TOKEN}{assistant}{END_TOKEN}"


def _pretrain_rows(items: list[Item], chat_questions: dict[Item, list[str]], rng: random.Random) -> list[dict]:
    """Every fact in prose, as a Question/Answer line and as a rambling chat transcript, PRETRAIN_PASSES times,
    with filler, packed into rows."""
    sentences: list[str] = []
    for _ in range(PRETRAIN_PASSES):
        for item in items:
            sentences += item.facts
            sentences.append(f"Question: {rng.choice(item.questions)} Answer: {item.answer}.")
            sentences.append(render_chat(rng.choice(chat_questions[item]), rng.choice(RAMBLING).format(a=item.answer)))
        sentences += FILLER
    rng.shuffle(sentences)
    rows, current, words = [], [], 0
    target = rng.randint(20, 40)
    for sentence in sentences:
        current.append(sentence)
        words += len(sentence.split())
        if words >= target:
            rows.append({"text": " ".join(current)})
            current, words, target = [], 0, rng.randint(20, 40)
    if current:  # pad the short last row with filler to keep every row at 20 words or more
        while words < 20:
            current.append(rng.choice(FILLER))
            words += len(current[-1].split())
        rows.append({"text": " ".join(current)})
    return rows


def _preference_rows(items: list[Item], prompts: dict[Item, list[str]], rng: random.Random) -> list[dict]:
    """1-2 pairs per item: a wrong answer of the same family and/or the right answer, rambling."""
    rows = []
    for item in items:
        kinds = ["wrong", "rambling"]
        rng.shuffle(kinds)
        for kind in kinds[: rng.choice((1, 2))]:
            rejected = rng.choice(item.distractors) if kind == "wrong" else rng.choice(RAMBLING).format(a=item.answer)
            rows.append(
                {
                    "prompt": rng.choice(prompts[item]),
                    "chosen": item.answer,
                    "rejected": rejected,
                    "family": item.family,
                    "answer": item.answer,
                }
            )
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def generate_demo_suite(out_dir, seed: int = 0) -> dict[str, Path]:
    """Write the suite's files into `out_dir`; returns file stem -> path (see FILE_NAMES)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = build_items()
    train, heldout = split_items(items, seed)
    rng = random.Random(f"{seed}:rows")
    # Training items are asked in every phrasing; each held-out item in one, fixed phrasing.
    prompts = {it: list(it.questions) for it in train}
    prompts.update({it: [rng.choice(it.questions)] for it in heldout})
    chat_questions = {it: [q for q in it.questions if q not in prompts[it] or it in train] for it in items}

    def sft(part: list[Item], rambling_share: float) -> list[dict]:
        def response(item: Item) -> str:
            return rng.choice(RAMBLING).format(a=item.answer) if rng.random() < rambling_share else item.answer

        rows = [
            {"prompt": q, "response": response(it), "family": it.family, "answer": it.answer}
            for it in part
            for q in prompts[it]
        ]
        rng.shuffle(rows)
        return rows

    def prompt_only(part: list[Item]) -> list[dict]:
        return [{"prompt": rng.choice(prompts[it]), "family": it.family, "answer": it.answer} for it in part]

    data = {
        "pretrain": _pretrain_rows(items, chat_questions, random.Random(f"{seed}:pretrain")),
        "sft": sft(train, SFT_RAMBLING_SHARE),
        "sft_heldout": sft(heldout, 0.0),
        "preference": _preference_rows(train, prompts, rng),
        "preference_heldout": _preference_rows(heldout, prompts, rng),
        "prompt_only": prompt_only(train),
        "prompt_only_heldout": prompt_only(heldout),
    }
    paths = {stem: out / name for stem, name in FILE_NAMES.items()}
    lines = []
    for stem, rows in data.items():
        _write_jsonl(paths[stem], rows)
        for row in rows:
            lines += [row[k] for k in ("text", "prompt", "response", "chosen", "rejected") if k in row]
    write_text_atomically(paths["corpus"], "".join(re.sub(r"\s+", " ", line) + "\n" for line in lines))
    return paths


def demo_dir(seed: int = 0) -> Path:
    """The cache directory of the suite for `seed`, keyed on GENERATOR_VERSION so a new generator never reuses
    stale files."""
    base = Path(os.environ.get("FORGE_TRL_CACHE", Path.home() / ".cache" / "forge_trl"))
    key = hashlib.sha256(f"{GENERATOR_VERSION}:{seed}".encode()).hexdigest()[:12]
    return base / f"demo-{key}"


def ensure_demo_suite(seed: int = 0) -> dict[str, Path]:
    """The cached suite's paths, generating it first if missing or incomplete. It is generated into a private
    sibling directory and renamed into place, so concurrent callers never see a partial suite."""
    target = demo_dir(seed)
    paths = {stem: target / name for stem, name in FILE_NAMES.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    try:
        write_dir_atomically(target, lambda tmp: generate_demo_suite(tmp, seed), overwrite=False)  # appears whole
    except FileExistsError:
        # A suite is there: another process's (every rank of a launch gets here at once), or one with files deleted
        # by hand. Its files are written again, each by an atomic rename of identical content, so no caller can see
        # a file vanish or appear half-written, whatever the interleaving.
        if not all(p.is_file() for p in paths.values()):
            generate_demo_suite(target, seed)
    return paths

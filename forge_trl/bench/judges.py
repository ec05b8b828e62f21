"""Judges of the responses, chosen by `bench.judge.*`.

- Pointwise (`bench.judge.pointwise=true`): an LLM judge (`bench.judge.url`, an OpenAI-compatible endpoint) grades
  each response 1-10 by `bench.judge.rubric`, with a short rationale; the row gets `judge_score`, the mean grade.
- Pairwise (`bench.judge.baseline=<checkpoint or target name>`): does the target's response beat the baseline's on
  the same prompt?
  - `LlmJudge.compare`: the LLM judge is asked twice per prompt, once with the target shown as answer A and once
    as answer B. The target wins when both orders prefer it, loses when both prefer the baseline, and ties when
    the two orders disagree (or the judge says tie in both), so a judge with a position bias cannot tilt the
    result: one that always answers "A" ties every prompt.
  - `RewardModelJudge.compare`: a local forge RM checkpoint (`bench.judge.reward_model`); the higher score wins.

Each judgement keeps the judge's rationale (its reply). A reply without a readable score or verdict is `unparsed`;
a request that failed after the client's retries (timeout, 5xx, an answer that is not a chat completion) is
`failed`. Neither stops the bench: the row counts them (`judge/unparsed`, `judge/failed`) and its rates are over
the judgements that came back. An endpoint that cannot be used at all (unreachable, unknown model, refused or
missing key) is a one-line ApiError (forge_trl/bench/api.py).

Score parsing (`parse_score`), first rule that matches, the LAST match of that rule (a judge's final line is its
decision; it may quote other numbers while reasoning):
  1. a labelled score: `Score: 7`, `**Score:** 8`, `Rating: 9 out of 10`, `Final score is 6/10`, `Grade = 5`;
  2. MT-bench's `[[7]]`;
  3. a fraction of ten: `7/10`, `7 out of 10`;
  4. a bold number: `**8**`;
  5. a reply that is only a number: `8`, `8.`.
A value outside 1-10 is unparsed (no fallback to another rule). Verdict parsing (`parse_choice`) likewise: a
labelled `Verdict: A` / `Winner: B` / `Verdict: tie` (last one), then `[[A]]`, then a reply that is only `A` or `B`
(or `Answer A`), then exactly one of A/B mentioned as `answer A`, `option B`, `A is better`, `B wins`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from forge_trl.bench.api import ChatEndpoint, Reply, run_concurrently
from forge_trl.bench.cache import CACHE_FILE, JudgeCache, request_key
from forge_trl.config.bench import ApiConfig, JudgeConfig
from forge_trl.errors import ForgeError

log = logging.getLogger(__name__)

POINTWISE_SYSTEM = (
    "You grade one answer to a user request on a scale from 1 (useless or wrong) to 10 (perfect). {rubric} "
    "Explain your grade in one or two sentences, then end with a line of the form 'Score: N', where N is an integer "
    "from 1 to 10."
)
PAIRWISE_SYSTEM = (
    "You compare two answers, A and B, to the same user request. {rubric} The order in which the answers are shown "
    "says nothing about their quality. Explain your choice in one or two sentences, then end with a line of the form "
    "'Verdict: A' or 'Verdict: B' ('Verdict: tie' only if they are equally good)."
)

_NUM = r"(\d+(?:\.\d+)?)"
_SCORE_RULES = [
    re.compile(
        r"(?i:score|rating|grade|mark)(?:\s*\(\s*1\s*-\s*10\s*\))?\s*[*_]*\s*(?i:is|of|=|:)?\s*[*_\s]*"
        + _NUM
        + r"(?:\s*(?:/|(?i:out of))\s*10)?"
    ),
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),
    re.compile(_NUM + r"\s*(?:/|(?i:out of))\s*10\b"),
    re.compile(r"\*\*\s*" + _NUM + r"\s*(?:/\s*10\s*)?\*\*"),
    re.compile(r"^\W*" + _NUM + r"\W*$"),
]
_CHOICE = r"((?i:(?:it'?s\s+)?(?:a\s+)?tie)|A|B)\b"
_LABELLED_CHOICE = re.compile(
    r"(?i:verdict|winner|choice|decision|better answer|final answer)\s*[*_]*\s*(?i:is|=|:)?\s*[*_\s\"'\[]*"
    r"(?i:answer\s+)?" + _CHOICE
)
_BRACKETED_CHOICE = re.compile(r"\[\[\s*" + _CHOICE + r"\s*\]\]")
_BARE_CHOICE = re.compile(r"^[\W_]*(?i:answer\s+)?([AaBb])[\W_]*$")
_MENTIONED_CHOICE = re.compile(r"(?i:answer|option|response)\s+(A|B)\b|\b(A|B)\s+(?i:is\s+better|wins)\b")

Choice = Literal["A", "B", "tie"]


def parse_score(reply: str) -> float | None:
    """The 1-10 grade in a judge's reply (see the module docstring for the rules), or None."""
    for rule in _SCORE_RULES:
        matches = rule.findall(reply.strip())
        if matches:
            value = float(matches[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def parse_choice(reply: str) -> Choice | None:
    """`A`, `B` or `tie` from a pairwise judge's reply (see the module docstring for the rules), or None."""
    text = reply.strip()
    for rule in (_LABELLED_CHOICE, _BRACKETED_CHOICE):
        matches = rule.findall(text)
        if matches:
            return _choice(matches[-1])
    if bare := _BARE_CHOICE.match(text):
        return _choice(bare.group(1).upper())
    mentioned = {a or b for a, b in _MENTIONED_CHOICE.findall(text)}
    return _choice(mentioned.pop()) if len(mentioned) == 1 else None


def _choice(token: str) -> Choice:
    return "tie" if token.lower().endswith("tie") else "A" if token == "A" else "B"


@dataclass
class Judgement:
    """One judgement of one response. Pointwise: `score` (1-10). Pairwise: `verdict` for the target against the
    baseline (`win`, `tie`, `loss`). `status`: `ok`, `unparsed` (no score or verdict in the reply) or `failed` (the
    request failed after its retries; `rationale` says why)."""

    kind: Literal["pointwise", "pairwise"]
    score: Optional[float] = None
    verdict: Optional[Literal["win", "tie", "loss"]] = None
    rationale: str = ""
    status: Literal["ok", "unparsed", "failed"] = "ok"

    @property
    def outcome(self) -> float | None:
        """1 win, 0.5 tie, 0 loss; None without a verdict."""
        return {"win": 1.0, "tie": 0.5, "loss": 0.0}.get(self.verdict) if self.verdict else None

    def record(self) -> dict:
        """The entry under `judges` in bench_results.jsonl."""
        value = {"score": self.score} if self.kind == "pointwise" else {"verdict": self.verdict}
        return {**value, "rationale": self.rationale, "status": self.status}


def pointwise_summary(judgements: Sequence[Judgement]) -> dict:
    scores = [j.score for j in judgements if j.score is not None]
    return {"judge_score": sum(scores) / len(scores) if scores else None, **_counts(judgements)}


def pairwise_summary(judgements: Sequence[Judgement]) -> dict:
    """win_rate (wins + half the ties) and the win/tie/loss shares, over the judgements with a verdict."""
    verdicts = [j.verdict for j in judgements if j.verdict]
    n = len(verdicts)
    if not n:
        return {"win_rate": None, "win_share": None, "tie_share": None, "loss_share": None, **_counts(judgements)}
    wins, ties = verdicts.count("win"), verdicts.count("tie")
    return {
        "win_rate": (wins + ties / 2) / n,
        "win_share": wins / n,
        "tie_share": ties / n,
        "loss_share": verdicts.count("loss") / n,
        **_counts(judgements),
    }


def _counts(judgements: Sequence[Judgement]) -> dict:
    return {
        "judge/unparsed": sum(j.status == "unparsed" for j in judgements),
        "judge/failed": sum(j.status == "failed" for j in judgements),
    }


class JudgeError(ForgeError):
    kind = "judge error"


def _section(title: str, text: str) -> str:
    return f"[{title}]\n{text}\n\n"


def _request(row: dict | str, reference: str | None) -> str:
    """The judged request: its system turn (if any), the user's prompt, and the reference answer (if any)."""
    data = {"prompt": row} if isinstance(row, str) else row
    system = data.get("system")
    return (
        (_section("System prompt", system) if isinstance(system, str) and system.strip() else "")
        + _section("User request", data["prompt"])
        + (_section("Reference answer", reference) if reference else "")
    )


class LlmJudge:
    """An LLM behind an OpenAI-compatible endpoint, pointwise and pairwise. Replies are cached on disk (see
    forge_trl/bench/cache.py) when a cache is given."""

    def __init__(self, cfg: JudgeConfig, api: ApiConfig, cache: JudgeCache | None = None):
        assert cfg.url is not None
        self.cfg, self.api, self.cache = cfg, api, cache
        self.endpoint = ChatEndpoint(cfg.url, cfg.model, cfg.api_key_env, api, where="bench.judge")
        self.name = f"llm:{self.endpoint.name}"
        self.requests_sent = 0

    def _ask_all(self, kind: str, conversations: list[list[dict]]) -> list[Reply]:
        """The judge's reply to each conversation: from the cache, or asked (concurrently) and then cached."""
        keys = [
            request_key(kind, self.endpoint.base_url, self.cfg.model, self.cfg.max_tokens, messages)
            for messages in conversations
        ]
        replies: list[Reply | None] = [None] * len(conversations)
        if self.cache is not None:
            for i, key in enumerate(keys):
                cached = self.cache.get(key)
                if cached is not None:
                    replies[i] = Reply(cached)
        todo = [i for i, reply in enumerate(replies) if reply is None]
        self.requests_sent += len(todo)
        asked = run_concurrently(
            lambda i: self.endpoint.complete(conversations[i], max_tokens=self.cfg.max_tokens),
            todo,
            self.api.max_concurrency,
        )
        for i, reply in zip(todo, asked):
            replies[i] = reply
        if self.cache is not None:
            self.cache.put_many({keys[i]: reply.text for i, reply in zip(todo, asked) if reply.error is None})
        return [r for r in replies if r is not None]

    def score(
        self, prompts: Sequence[dict | str], responses: Sequence[str], references: Sequence[str | None] | None = None
    ) -> list[Judgement]:
        """A 1-10 grade of each response to its prompt."""
        system = POINTWISE_SYSTEM.format(rubric=self.cfg.criteria)
        conversations = [
            [
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": _request(prompt, ref)
                    + _section("Answer", response)
                    + "Grade the answer from 1 to 10; end with 'Score: N'.",
                },
            ]
            for prompt, response, ref in zip(prompts, responses, references or [None] * len(prompts))
        ]
        judgements = []
        for reply in self._ask_all("pointwise", conversations):
            if reply.error is not None:
                judgements.append(Judgement("pointwise", rationale=reply.error, status="failed"))
                continue
            score = parse_score(reply.text)
            judgements.append(
                Judgement(
                    "pointwise",
                    score=score,
                    rationale=reply.text.strip(),
                    status="ok" if score is not None else "unparsed",
                )
            )
        _warn(self.name, "pointwise", judgements)
        return judgements

    def _pair(self, prompt: dict | str, first: str, second: str, ref: str | None) -> list[dict]:
        return [
            {"role": "system", "content": PAIRWISE_SYSTEM.format(rubric=self.cfg.criteria)},
            {
                "role": "user",
                "content": _request(prompt, ref)
                + _section("Answer A", first)
                + _section("Answer B", second)
                + "Which answer is better? End with 'Verdict: A' or 'Verdict: B'.",
            },
        ]

    def compare(
        self,
        prompts: Sequence[dict | str],
        target: Sequence[str],
        baseline: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> list[Judgement]:
        """The target's verdict against the baseline on each prompt, asked in both orders."""
        refs = references or [None] * len(prompts)
        conversations = []
        for prompt, ours, theirs, ref in zip(prompts, target, baseline, refs):
            conversations += [self._pair(prompt, ours, theirs, ref), self._pair(prompt, theirs, ours, ref)]
        replies = self._ask_all("pairwise", conversations)
        judgements = [_both_orders(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]
        _warn(self.name, "pairwise", judgements)
        return judgements


def _both_orders(target_first: Reply, target_second: Reply) -> Judgement:
    rationale = (
        f"target as A: {target_first.error or target_first.text.strip()}\n"
        f"target as B: {target_second.error or target_second.text.strip()}"
    )
    if target_first.error is not None or target_second.error is not None:
        return Judgement("pairwise", rationale=rationale, status="failed")
    first, second = parse_choice(target_first.text), parse_choice(target_second.text)
    if first is None or second is None:
        return Judgement("pairwise", rationale=rationale, status="unparsed")
    as_a = {"A": "win", "B": "loss", "tie": "tie"}[first]
    as_b = {"A": "loss", "B": "win", "tie": "tie"}[second]
    return Judgement("pairwise", verdict=as_a if as_a == as_b else "tie", rationale=rationale)  # type: ignore[arg-type]


def _warn(name: str, kind: str, judgements: Sequence[Judgement]) -> None:
    counts = _counts(judgements)
    if counts["judge/unparsed"] or counts["judge/failed"]:
        log.warning(
            "judge %s (%s): %d of %d judgements unparsed, %d failed; they are left out of the scores",
            name,
            kind,
            counts["judge/unparsed"],
            len(judgements),
            counts["judge/failed"],
        )


class RewardModelJudge:
    """A forge reward model as the pairwise judge: the response with the higher score wins."""

    def __init__(self, checkpoint: str):
        from forge_trl.rl.reward import load_reward_model

        self.name = f"rm:{checkpoint}"
        self.model, self.tokenizer = load_reward_model(checkpoint)

    def compare(
        self,
        prompts: Sequence[dict | str],
        target: Sequence[str],
        baseline: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> list[Judgement]:
        from forge_trl.bench.metrics import reward_scores

        ours = reward_scores(self.model, self.tokenizer, prompts, target)
        theirs = reward_scores(self.model, self.tokenizer, prompts, baseline)
        return [
            Judgement(
                "pairwise",
                verdict="win" if a > b else "loss" if a < b else "tie",
                rationale=f"reward {a:.4f} vs baseline {b:.4f}",
            )
            for a, b in zip(ours, theirs)
        ]


@dataclass
class Judges:
    """The configured judges: `pointwise` (an LlmJudge or None) and `pairwise` (an LlmJudge, a RewardModelJudge or
    None; set only with a baseline)."""

    pointwise: Optional[LlmJudge] = None
    pairwise: Optional[LlmJudge | RewardModelJudge] = None
    cache: Optional[JudgeCache] = None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def make_judges(cfg: JudgeConfig, api: ApiConfig, out_dir: str | Path | None = None) -> Judges:
    """The configured judges. The LLM judge's replies are cached in `<out_dir>/judge_cache.sqlite` when `out_dir`
    is given."""
    if cfg.baseline is None and (cfg.reward_model or (cfg.url and not cfg.pointwise)):
        log.warning("bench.judge is set but bench.judge.baseline is not: no win-rate is computed")
    if cfg.baseline is not None and not (cfg.url or cfg.reward_model):
        raise JudgeError(
            "bench.judge.baseline is set but no judge: set bench.judge.reward_model (a task=rm checkpoint) "
            "or bench.judge.url (an OpenAI-compatible endpoint)"
        )
    judges = Judges()
    if cfg.url and (cfg.pointwise or cfg.baseline is not None):
        if cfg.cache and out_dir is not None:
            judges.cache = JudgeCache(Path(out_dir) / CACHE_FILE)
        llm = LlmJudge(cfg, api, judges.cache)
        judges.pointwise = llm if cfg.pointwise else None
        judges.pairwise = llm if cfg.baseline is not None else None
    elif cfg.reward_model and cfg.baseline is not None:
        judges.pairwise = RewardModelJudge(cfg.reward_model)
    return judges

"""Pairwise judges for win-rate: does the target's response beat the baseline's on the same prompt?

Two kinds, chosen by `bench.judge.*`:
- `RewardModelJudge`: a local forge RM checkpoint; the higher score wins.
- `HttpJudge`: an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, TGI, OpenAI), asked to
  answer `A` or `B`. The target is shown first on even prompts and second on odd ones, so a judge that always
  prefers one position scores 50%, not 0% or 100%.

`compare` returns one outcome per prompt: 1.0 target wins, 0.0 baseline wins, 0.5 tie or no verdict.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

from forge_trl.config.bench import JudgeConfig
from forge_trl.data.prompts import heldout_text
from forge_trl.errors import ForgeError

log = logging.getLogger(__name__)

JUDGE_INSTRUCTIONS = (
    "You compare two answers to the same user request. Reply with exactly one letter: A if answer A is better, "
    "B if answer B is better. Judge correctness first, then concision."
)
VERDICT = re.compile(r"\b([AB])\b")


class JudgeError(ForgeError):
    kind = "judge error"


class RewardModelJudge:
    def __init__(self, checkpoint: str):
        from forge_trl.rl.reward import load_reward_model

        self.name = f"rm:{checkpoint}"
        self.model, self.tokenizer = load_reward_model(checkpoint)

    def compare(self, prompts: Sequence[dict | str], target: Sequence[str], baseline: Sequence[str]) -> list[float]:
        from forge_trl.bench.metrics import reward_scores

        ours = reward_scores(self.model, self.tokenizer, prompts, target)
        theirs = reward_scores(self.model, self.tokenizer, prompts, baseline)
        return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(ours, theirs)]


class HttpJudge:
    def __init__(self, cfg: JudgeConfig):
        if cfg.url is None:
            raise JudgeError("bench.judge.url: not set; the HTTP judge needs an OpenAI-compatible endpoint")
        self.cfg = cfg
        self.name = f"http:{cfg.url}"
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self.unparsed = 0

    def _ask(self, prompt: str, first: str, second: str) -> str:
        body = {
            "model": self.cfg.model,
            "temperature": 0,
            "max_tokens": 4,
            "messages": [
                {"role": "system", "content": JUDGE_INSTRUCTIONS},
                {
                    "role": "user",
                    "content": f"Request:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
                    "Which answer is better? Reply A or B.",
                },
            ],
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise JudgeError(f"bench.judge.url: {self.endpoint} answered HTTP {exc.code} ({exc.reason})") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeError(f"bench.judge.url: cannot reach {self.endpoint} ({reason})") from None
        except json.JSONDecodeError:
            raise JudgeError(f"bench.judge.url: {self.endpoint} did not answer with JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"bench.judge.url: {self.endpoint} answered without choices[0].message.content; "
                "expected an OpenAI-compatible chat-completions response"
            ) from None

    def compare(self, prompts: Sequence[dict | str], target: Sequence[str], baseline: Sequence[str]) -> list[float]:
        outcomes = []
        for i, (prompt, ours, theirs) in enumerate(zip(prompts, target, baseline)):
            target_first = i % 2 == 0
            reply = self._ask(heldout_text(prompt), *((ours, theirs) if target_first else (theirs, ours)))
            verdict = VERDICT.search(reply.strip().upper())
            if verdict is None:
                self.unparsed += 1
                outcomes.append(0.5)
                continue
            first_wins = verdict.group(1) == "A"
            outcomes.append(1.0 if first_wins == target_first else 0.0)
        if self.unparsed:
            log.warning("judge gave no A/B verdict on %d of %d prompts (counted as ties)", self.unparsed, len(prompts))
        return outcomes


def make_judge(cfg: JudgeConfig):
    """The configured judge, or None when no win-rate is asked for."""
    if cfg.baseline is None:
        if cfg.url or cfg.reward_model:
            log.warning("bench.judge is set but bench.judge.baseline is not: no win-rate is computed")
        return None
    if cfg.url:
        return HttpJudge(cfg)
    if cfg.reward_model:
        return RewardModelJudge(cfg.reward_model)
    raise JudgeError(
        "bench.judge.baseline is set but no judge: set bench.judge.reward_model (a task=rm checkpoint) "
        "or bench.judge.url (an OpenAI-compatible endpoint)"
    )

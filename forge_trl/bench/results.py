"""bench_results.jsonl: every response the bench saw, with its per-sample metrics and judgements.

Written next to bench.json (atomically, replaced on each run). One JSON object per line, one line per (target,
prompt, sample), in bench order: the targets as in bench.json's `checkpoints`, then the prompts in held-out order,
then the samples (`bench.samples_per_prompt`). Reward-model checkpoints score pairs, not prompts: they have no lines.

    {
      "target":    "sft",                  # the row's label in bench.json (`checkpoints[i].label`)
      "index":     0,                      # the prompt's position in the held-out prompts
      "sample":    0,                      # 0 .. bench.samples_per_prompt - 1
      "prompt":    "What is 2 plus 3?",    # the user text
      "system":    "Answer briefly.",      # the system turn, or null
      "reference": "5",                    # the row's `answer`, or null
      "response":  "5",                    # the full response (a reasoning block included)
      "error":     null,                   # API targets: why the request failed (the response is then "")
      "metrics": {                         # per-sample values of the table's metrics, where they apply:
        "checker_accuracy": 1.0,           #   1.0/0.0; null without a reference
        "format_compliance": 1.0,          #   1.0/0.0
        "length": 1,                       #   response tokens (API targets: the server's count; null if unreported)
        "rm_score": 0.73                   #   only with a reward model
      },
      "judges": {                          # only the judges that ran for this target
        "pointwise": {"score": 8.0, "rationale": "...", "status": "ok"},
        "pairwise":  {"verdict": "win", "rationale": "target as A: ...\\ntarget as B: ...", "status": "ok",
                      "baseline": "base"}
      }
    }

`score` is the 1-10 grade (null unless `status` is `ok`); `verdict` is `win`, `tie` or `loss` for the target against
`bench.judge.baseline` (null unless `status` is `ok`); `status` is `ok`, `unparsed` (the judge's reply had no
readable score or verdict) or `failed` (the request failed after its retries; the rationale says why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

from forge_trl.bench.judges import Judgement
from forge_trl.bench.metrics import Generation
from forge_trl.files import write_text_atomically

RESULTS_FILE = "bench_results.jsonl"


def sample_records(
    target: str,
    prompts: Sequence[dict | str],
    samples_per_prompt: int,
    references: Sequence[Optional[str]],
    generations: Sequence[Generation],
    metrics: Mapping[str, Sequence],
    judges: Mapping[str, Sequence[Judgement]],
    *,
    baseline: Optional[str] = None,
) -> list[dict]:
    """One record per response; `prompts` and `references` per prompt, the rest per response (prompt-major)."""
    records = []
    for n, gen in enumerate(generations):
        index, sample = divmod(n, samples_per_prompt)
        held = prompts[index]
        row: dict = {"prompt": held} if isinstance(held, str) else held
        system = row.get("system")
        entry: dict = {
            "target": target,
            "index": index,
            "sample": sample,
            "prompt": row["prompt"],
            "system": system if isinstance(system, str) else None,
            "reference": references[index],
            "response": gen.text,
            "error": gen.error,
            "metrics": {name: values[n] for name, values in metrics.items()},
            "judges": {},
        }
        for name, judgements in judges.items():
            record = judgements[n].record()
            if name == "pairwise" and baseline is not None:
                record["baseline"] = baseline
            entry["judges"][name] = record
        records.append(entry)
    return records


def write_results(records: Sequence[dict], out_dir: Path) -> Path:
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return write_text_atomically(out_dir / RESULTS_FILE, text)


def read_results(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

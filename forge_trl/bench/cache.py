"""The LLM judge's replies, kept on disk so that a rerun of the bench does not pay for the same judgement twice.

One sqlite3 file (`<bench.out>/judge_cache.sqlite`): key = a hash of everything that makes up the request (judge
endpoint and model, the kind of judgement, the system message with its rubric, the user message with the prompt and
the response(s) in their order, the reply budget), value = the judge's raw reply. Raw replies, not parsed verdicts,
so a better parser applies to cached replies too. Failed requests are not kept: a rerun asks them again. Only the
bench's main thread reads and writes it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

CACHE_FILE = "judge_cache.sqlite"


def request_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, at REAL)")
        self.db.commit()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_many(self, items: dict[str, str]) -> None:
        if items:
            now = time.time()
            self.db.executemany(
                "INSERT OR REPLACE INTO replies (key, reply, at) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in items.items()],
            )
            self.db.commit()

    def close(self) -> None:
        self.db.close()

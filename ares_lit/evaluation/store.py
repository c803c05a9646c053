"""`samples.jsonl`, written batch by batch and resumed at a batch boundary.

Each finished batch of problems is appended (and flushed to disk) as n rows per problem. On a
rerun into the same folder, the rows of every leading batch whose problems all have their n rows
are kept; anything after (a batch cut off by a kill, a torn last line) is dropped and redone. The
file is rewritten atomically, so a second kill during the rewrite loses nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ares_lit.atomic_io import write_text_atomic

__all__ = ["SampleStore", "PUBLIC_FIELDS"]

# The public row schema of samples.jsonl (README "Evaluation"); `problem`, `boxed` and
# `grader_timeout` follow them.
PUBLIC_FIELDS = (
    "id", "source", "level", "sample", "prompt", "response", "answer", "gold", "correct", "n_tokens",
    "finish_reason", "seed",
)
_ROW_FIELDS = (*PUBLIC_FIELDS, "problem", "boxed", "grader_timeout")


class SampleStore:
    """Appends graded rows to `path` and tells where a rerun resumes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def resume(self, problem_ids: list[str], n: int, batch_size: int) -> tuple[list[dict], int]:
        """(rows kept, first problem to do); rewrites the file to hold exactly the kept rows.

        Raises ValueError when the file holds rows of other problems (another data set or order)."""
        if not self.path.exists():
            return [], 0
        rows: list[dict] = []
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line: everything from here is redone
                if not isinstance(row, dict) or "problem" not in row:
                    break
                rows.append(row)
        counts = [0] * len(problem_ids)
        for row in rows:
            p = int(row["problem"])
            if not 0 <= p < len(problem_ids) or str(row["id"]) != str(problem_ids[p]):
                raise ValueError(
                    f"{self.path} holds rows of other problems (row for problem {p} has id {row['id']!r}); "
                    "use a new --output_dir or pass --overwrite"
                )
            counts[p] += 1
        done = 0
        while done < len(problem_ids):
            batch = range(done, min(done + batch_size, len(problem_ids)))
            if not all(counts[p] == n for p in batch):
                break
            done = batch.stop
        kept = [r for r in rows if int(r["problem"]) < done]
        kept.sort(key=lambda r: (int(r["problem"]), int(r["sample"])))
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept)
        if text != self.path.read_text(encoding="utf-8"):  # a torn tail or unfinished batches: a new file, renamed in
            write_text_atomic(self.path, text)  # a full disk names the file and keeps the old one
        return kept, done

    def append(self, rows: list[dict]) -> None:
        """Append one batch's rows and flush them to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row.get(k) for k in _ROW_FIELDS}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

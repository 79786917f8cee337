"""An on-disk cache of VLM answers: sqlite3 (standard library), JSON values, no pickle.

Keys are hex digests of everything that determines an answer (model, template version, sampling
settings, the frames' digests and their order; see `VLMLabeler._key`). Each answer is committed
as it arrives, so a crash loses no paid call.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Optional


class AnswerCache:
  """`get(key) -> dict | None`, `put(key, dict)`; one sqlite file, safe across restarts."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._db = sqlite3.connect(path, check_same_thread=False)
    self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    self._db.commit()

  def get(self, key: str) -> Optional[dict[str, Any]]:
    row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])

  def put(self, key: str, value: dict[str, Any]) -> None:
    self._db.execute("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
                     (key, json.dumps(value)))
    self._db.commit()

  def __len__(self) -> int:
    return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

  def close(self) -> None:
    self._db.close()

"""What the annotation server knows: the pairs to label, their frames, who labels what, the file.

Pairs come from a pair dataset (frames decoded once and cached as PNG sprite sheets), plus
optional gold pairs with known answers (identical videos: every segment a tie; a segment
corrupted with `shapesworld.artifacts`: the clean member wins it). Labels are appended to a JSONL
file in `data/labels_io.py`'s import format the moment they arrive (gold answers to
`<out>.gold.jsonl`, which the import never sees), one whole line at a time (`data/jsonl.py`: a
failed write leaves no fragment); a restart sets aside a cut-short last line, reads both files back
and resumes. The leases and the id key live in `<out>.leases.json`, so a restart keeps every pair
with the annotator who holds it and the ids an open page shows stay valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import os
import secrets
import threading
import time
import zlib
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from densedpo_jax import distributed, previews
from densedpo_jax.data import arrayrecord_io, jsonl, schema

LEASE_SECONDS = 600  # A pair handed out and not submitted goes back to the pool after this.


@dataclasses.dataclass
class Item:
  """One pair to label: its record (or gold pair), the frames and the known answer, if gold."""
  id: str
  prompt: str
  fps: float
  frames_per_segment: int
  num_segments: int
  frames: tuple[np.ndarray, np.ndarray]  # uint8 [T, H, W, 3] of members a and b.
  gold: Optional[list[int]] = None  # Known segment labels (a/b order) of a gold pair.


def _hash01(text: str) -> float:
  return zlib.crc32(text.encode("utf-8")) / 2 ** 32


def gold_items(items: list[Item], count: int, seed: int = 0) -> list[Item]:
  """`count` gold pairs built from the given pairs' member a: alternately identical videos (all
  ties) and a copy with one segment corrupted (artifacts), where the clean member wins it."""
  from densedpo_jax.shapesworld import artifacts  # ShapesWorld's corruptions (any RGB video works).
  out, rng = [], np.random.default_rng(seed)
  for k in range(count):
    src = items[k % len(items)]
    a = src.frames[0]
    if k % 2 == 0:
      out.append(dataclasses.replace(src, id=f"gold-{k}-identical", frames=(a, a.copy()),
                                     gold=[0] * src.num_segments))
      continue
    s = int(rng.integers(src.num_segments))
    start = s * src.frames_per_segment
    frames = np.arange(start, min(start + src.frames_per_segment, len(a)))
    kind = ("vanishing", "blur")[(k // 2) % 2]  # Both show on any RGB video.
    bad = previews.to_uint8(artifacts.corrupt(a.astype(np.float32) / 127.5 - 1.0, frames, kind, 1.0))
    labels = [0] * src.num_segments
    if k % 4 == 1:
      frames, labels[s] = (a, bad), 1
    else:
      frames, labels[s] = (bad, a), -1
    out.append(dataclasses.replace(src, id=f"gold-{k}-corrupt-{s}", frames=frames, gold=labels))
  return out


class NotLeased(ValueError):
  """A label for a pair the server did not hand to this annotator, or no longer needs."""


class Store:
  """Thread-safe catalogue, assignment and label file of one annotation session."""

  def __init__(self, items: list[Item], out: str, double_share: float = 0.0, seed: int = 0,
               cache_dir: Optional[str] = None, clock: Callable[[], float] = time.time):
    self.items = {it.id: it for it in items}
    self.order = sorted(self.items, key=lambda i: _hash01(f"{seed}:{i}"))
    self.out, self.gold_out = out, out + ".gold.jsonl"
    self.double = {i for i in self.items if _hash01(f"double:{i}") < double_share}
    self.cache_dir = cache_dir or out + ".frames"
    self.clock, self.lock = clock, threading.Lock()
    self.done: dict[str, set[str]] = {i: set() for i in self.items}  # Pair -> annotators.
    # Pair -> {annotator: when it was handed out}. Only a holder may submit; a lease older than
    # LEASE_SECONDS no longer blocks others from getting the pair.
    self.leases: dict[str, dict[str, float]] = {i: {} for i in self.items}
    # Ids on the wire: an HMAC of the real id under a key made at the first start (kept in the
    # leases file), so no id (a gold pair's included) tells its answer or can be guessed; the
    # label file keeps the real ids.
    self.leases_path, self._leases_warned = out + ".leases.json", False
    self.notes = []  # One line per label file whose cut-short last line was set aside.
    saved = self._read_leases()
    key = bytes.fromhex(saved["key"]) if saved else secrets.token_bytes(16)
    self.public = {i: hmac.new(key, i.encode(), "sha256").hexdigest()[:20] for i in self.items}
    self.by_public = {v: k for k, v in self.public.items()}
    for path in (out, self.gold_out):
      if os.path.exists(path):
        if note := jsonl.set_aside_partial_line(path):
          self.notes.append(note)
        for _, d in jsonl.read_objects(path):
          if d.get("id") in self.done:
            self.done[d["id"]].add(d.get("annotator", ""))
    for pid, held in (saved or {}).get("leases", {}).items():  # Leases of the last run.
      if pid in self.leases:
        self.leases[pid].update({a: float(t) for a, t in held.items() if a not in self.done[pid]})
    self._key = key.hex()
    with self.lock:
      self._save_leases()

  def _read_leases(self) -> Optional[dict]:
    """The last run's key and leases, or None (first run; an unreadable file is named and a new
    key is made: the label files, not this one, hold every label)."""
    if not os.path.exists(self.leases_path):
      return None
    try:
      with open(self.leases_path, encoding="utf-8") as f:
        saved = json.load(f)
      bytes.fromhex(saved["key"])
      leases = saved.get("leases", {})
      if not (isinstance(leases, dict) and all(
          isinstance(h, dict) and all(isinstance(t, (int, float)) for t in h.values())
          for h in leases.values())):
        raise ValueError("leases: expected {pair: {annotator: time}}")
      return saved
    except (OSError, ValueError, KeyError, TypeError) as e:
      self.notes.append(f"{self.leases_path}: unreadable ({e}); a new id key is made and pairs "
                        "handed out before the restart go back to the pool")
      return None

  def _save_leases(self) -> None:
    """Writes the key and live leases (the caller holds the lock); a failed write (a full disk)
    is one warning line: leases matter only across a restart."""
    now = self.clock()
    leases = {pid: {a: t for a, t in held.items() if now - t < LEASE_SECONDS}
              for pid, held in self.leases.items()}
    try:
      distributed.write_text(self.leases_path, json.dumps(
          {"key": self._key, "leases": {p: h for p, h in leases.items() if h}}))
      self._leases_warned = False
    except OSError as e:
      if not self._leases_warned:  # Once until a write succeeds again, not once a request.
        print(f"annotate: WARNING {self.leases_path} not written ({e.strerror}); a restart "
              "would hand out the pairs now held again", flush=True)
      self._leases_warned = True

  def wanted(self, pair_id: str) -> int:
    return 2 if pair_id in self.double else 1

  def next_pair(self, annotator: str) -> Optional[Item]:
    """The pair this annotator holds a live lease on, else the first pair in the session's order
    that they have not labeled and that still needs an annotator; leased to `annotator`."""
    now = self.clock()
    with self.lock:
      for pid in self.order:
        if (annotator not in self.done[pid] and len(self.done[pid]) < self.wanted(pid)
            and now - self.leases[pid].get(annotator, -1e18) < LEASE_SECONDS):
          self.leases[pid][annotator] = now  # A refresh: the file keeps the grant's time.
          return self.items[pid]
      for pid in self.order:
        if annotator in self.done[pid]:
          continue
        others = sum(now - t < LEASE_SECONDS for a, t in self.leases[pid].items() if a != annotator)
        if len(self.done[pid]) + others < self.wanted(pid):
          self.leases[pid][annotator] = now
          self._save_leases()
          return self.items[pid]
    return None

  def progress(self, annotator: str) -> dict[str, int]:
    with self.lock:
      mine = sum(annotator in d for d in self.done.values())
      complete = sum(len(self.done[p]) >= self.wanted(p) for p in self.items)
    return {"labeled_by_you": mine, "complete": complete, "total": len(self.items)}

  def swap(self, pair_id: str, annotator: str) -> bool:
    """Whether this annotator sees b on the left (random per pair and annotator, stable)."""
    return _hash01(f"swap:{pair_id}:{annotator}") < 0.5

  def record(self, pair_id: str, annotator: str, line: dict[str, Any]) -> bool:
    """Appends one validated label line and marks the pair done for the annotator; False (and
    nothing written) when this annotator already labeled it (a double submit). A failed write
    (`OSError`, e.g. a full disk) leaves the file at its last whole line and the pair undone."""
    path = self.gold_out if self.items[pair_id].gold is not None else self.out
    with self.lock:
      if annotator in self.done[pair_id]:
        return False
      if annotator not in self.leases[pair_id]:
        raise NotLeased(f"was not handed to {annotator} (ask /api/next first)")
      if len(self.done[pair_id]) >= self.wanted(pair_id):
        self.leases[pair_id].pop(annotator, None)  # So /api/next moves on to another pair.
        raise NotLeased("already has its labels (your lease expired and it went to someone "
                        "else); take the next pair")
      jsonl.append(path, line)
      self.done[pair_id].add(annotator)
      self.leases[pair_id].pop(annotator, None)
      self._save_leases()
    return True

  def sprite(self, pair_id: str, member: str, min_side: int = 256) -> bytes:
    """PNG of every frame of a member side by side, scaled up (rendered once, then cached).
    When the cache cannot be written (a full disk), the sheet is served from memory, with one
    warning line naming the cache folder, and no partial file is left behind."""
    frames = self.items[pair_id].frames[0 if member == "a" else 1]
    digest = hashlib.sha1(pair_id.encode() + frames.tobytes()).hexdigest()[:20]
    path = os.path.join(self.cache_dir, f"{digest}-{member}-{min_side}.png")
    if os.path.exists(path):
      with open(path, "rb") as f:
        return f.read()
    sheet = np.concatenate(list(previews.upscale(frames, min_side)), axis=1)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    png = buffer.getvalue()
    tmp = path + f".{threading.get_ident()}.tmp"
    try:
      os.makedirs(self.cache_dir, exist_ok=True)
      with open(tmp, "wb") as f:
        f.write(png)
      os.replace(tmp, path)
    except OSError as e:
      try:
        os.remove(tmp)
      except OSError:
        pass
      print(f"annotate: WARNING frame cache {self.cache_dir} not written ({e.strerror}); "
            "serving the frames from memory", flush=True)
    return png


def items_from_dataset(directory: str, name: str, decoder=None) -> list[Item]:
  """Items of a pair dataset; `decoder(rec) -> (a, b)` in [-1, 1] (default: the latents are
  pixels, as in ShapesWorld)."""
  out = []
  for rec in arrayrecord_io.iter_records(directory, name):
    if not isinstance(rec, schema.PairRecord):
      raise ValueError(f"{directory}/{name} holds {rec.KIND} records; the page labels pairs")
    if decoder is None:
      if rec.temporal_factor != 1 or np.shape(rec.latent_a)[-1] != 3:
        raise ValueError(f"{directory}/{name}: latent records; pass --videos_dir with their "
                         "decoded videos (python -m densedpo_jax.decode)")
      a, b = rec.latent_a, rec.latent_b
    else:
      a, b = decoder(rec)
    out.append(Item(rec.id, rec.prompt, rec.fps, rec.frames_per_segment, rec.num_segments,
                    (previews.to_uint8(np.asarray(a, np.float32)),
                     previews.to_uint8(np.asarray(b, np.float32)))))
  if not out:
    raise ValueError(f"{directory}/{name} has no pairs")
  return out

"""Grain input pipelines for video records (pretraining / SFT) and pair records (DPO).

    source -> shuffle(seed) -> repeat -> shard by process -> decode + validate
           -> filter (pairs) -> example dict -> to_iter_dataset(read threads, prefetch)
           -> batch

`source` is any random-access source of `RawRecord`s: `ShardedSource` (our
ArrayRecord shards) or `TfdsSource` (a TFDS `as_data_source`). Shuffling and
sharding only permute indices, so nothing is read before the decode step.

Notes on the order:
  - Sharding splits the repeated stream of permutations (each epoch shuffled
    anew: grain folds the epoch into the shuffle seed) in blocks of one
    process's batch: process i reads block i of every `process_count` blocks.
    So the global batch (the processes' batches, in process order) is the same
    batch, in the same order, on any number of processes (unless the filter
    drops pairs), and the processes' shares are disjoint. All processes must
    pass the same `seed`.
  - Grain cannot batch a `MapDataset` after a `filter` (filtering makes
    positions sparse), so batching happens after `to_iter_dataset`; the read
    threads decode, filter and convert elements in parallel ahead of it.

Pair filter modes (docs/training.md, Data):
  'dense':  keep labeled pairs whose share of non-tie segments is more than
            `min_nontie_frac` (paper: 0.2); `labels` are latent-frame labels.
  'global': keep pairs with a global label of +1 or -1 (Vanilla / Structural
            DPO drop ties); `labels` is the global label on every latent frame.
  With `filter_pairs=False` nothing is dropped (unlabeled pairs get 0 labels).

Batch of pairs (B = batch_size, T' latent frames, S segments):
  latent_a, latent_b  [B, T', H, W, C] in the stored dtype (float32 / bfloat16 / float16: hosts
                      move half the bytes of bf16 data; the train step casts on device)
  text_emb            [B, L, D] in the stored dtype;  text_mask bool [B, L]
  labels              int8 [B, T'] in {-1, 0, +1}  (+1: a wins)
  global_label        int8 [B]  (0 when absent)
  segment_labels      int8 [B, S]  (0 when absent)
  segment_ids         int32 [B, T']  segment of each latent frame, -1 if it straddles two
  eta                 float32 [B]  (NaN for vanilla pairs)
  id                  str [B]
  cond_latent         [B, T' or 1, H, W, C], image_emb [B, N, D_img]: image-to-video records only
Batch of videos: latent [B, T', H, W, C] and text_emb in their stored dtypes, text_mask, id (and
the condition of image-to-video records).

Resuming: `it = iter(ds)`; `state = it.get_state()` (a small JSON-able dict);
later `it2 = iter(ds); it2.set_state(state)` yields exactly the batches `it`
would have. Save it with orbax through `grain.checkpoint.CheckpointSave(it)`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import grain
import jax
import numpy as np

from densedpo_jax.data import segments
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import schema

PAIR_MODES = ("dense", "global")


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} must be in [0, process_count={count})")
  return index, count


class _BlockShard(grain.MapDataset):
  """Block `index` of every `count` consecutive blocks of `block` elements of `parent`."""

  def __init__(self, parent: grain.MapDataset, index: int, count: int, block: int):
    super().__init__(parent)
    self._index, self._count, self._block = index, count, block
    self._length = len(parent) // (block * count) * block

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    epoch, offset = divmod(index, self._length)  # Past the end: the next pass, as grain does.
    group, within = divmod(offset, self._block)
    return (epoch * len(self._parent) + (group * self._count + self._index) * self._block
            + within)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return f"_BlockShard(index={self._index}, count={self._count}, block={self._block})"


def records_dataset(source, *, seed: int, shuffle: bool = True, num_epochs: Optional[int] = None,
                    process_index: Optional[int] = None, process_count: Optional[int] = None,
                    validate: bool = True, shard_block: int = 1) -> grain.MapDataset:
  """`MapDataset` of decoded, validated records: this process's share, shuffled, repeated.

  Args:
    source: random-access source of `RawRecord`s (ShardedSource, TfdsSource).
    seed: shuffle seed, identical on all processes (0 <= seed < 2**32).
    shuffle: shuffle globally (reshuffled each epoch).
    num_epochs: epochs to repeat; None repeats forever.
    process_index, process_count: this process's shard (default: jax.process_index(),
      jax.process_count()); process i takes block i of every `count` blocks of
      `shard_block` positions of the repeated stream of permutations.
    validate: run schema validation on every decoded record.
    shard_block: positions a block (the per-process batch size: then the processes' batches
      make up the batch that one process would read).
  """
  index, count = _process(process_index, process_count)
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if count > 1:
    ds = _BlockShard(ds, index, count, shard_block)
  ds = ds.map(functools.partial(arrayrecord_io.decode_raw, validate=validate))
  return ds.filter(lambda rec: rec is not None)  # Unreadable records the source skipped.


def _check_kind(source, kind: str) -> None:
  have = getattr(source, "kind", None)
  if have and have != kind:
    raise ValueError(f"{source!r} holds {have} records; this pipeline reads {kind} records")


def keep_pair(rec: schema.PairRecord, mode: str, min_nontie_frac: float = 0.2) -> bool:
  """Whether a pair trains in `mode` ('dense' or 'global'; see the module doc)."""
  if not isinstance(rec, schema.PairRecord):
    raise TypeError(f"expected a PairRecord, got {type(rec).__name__}")
  if mode == "dense":
    return rec.segment_labels is not None and bool(segments.keep_pair(rec.segment_labels, min_nontie_frac))
  if mode == "global":
    return rec.global_label is not None and rec.global_label != 0
  raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}")


def require_a_kept_pair(source, mode: str, min_nontie_frac: float) -> None:
  """ValueError unless some pair passes the filter: an endless filtered stream would hang.

  Scans in source order and stops at the first pair kept (usually the first record).
  """
  for i in range(len(source)):
    rec = arrayrecord_io.decode_raw(source[i])
    if rec is not None and keep_pair(rec, mode, min_nontie_frac):
      return
  what = (f"more than {min_nontie_frac:.0%} non-tie segments" if mode == "dense"
          else "a non-tie global label")
  raise ValueError(f"{source!r}: none of its {len(source)} pairs has {what}, so the {mode!r} "
                   "pipeline has nothing to train on (unlabeled pairs? all ties?)")


def pair_example(rec: schema.PairRecord, mode: str = "dense") -> dict[str, Any]:
  """A pair record -> the training example dict (shapes in the module doc, without B)."""
  t = rec.latent_a.shape[0]
  s = rec.num_segments
  seg = rec.segment_labels if rec.segment_labels is not None else np.zeros((s,), np.int8)
  glob = 0 if rec.global_label is None else int(rec.global_label)
  if mode == "dense":
    labels = segments.latent_frame_labels(seg, rec.num_frames, rec.frames_per_segment,
                                          rec.temporal_factor, rec.causal).astype(np.int8)
  elif mode == "global":
    labels = np.full((t,), glob, np.int8)
  else:
    raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}")
  return {
      "latent_a": rec.latent_a,  # Stored dtypes (e.g. bf16): the train step casts on device.
      "latent_b": rec.latent_b,
      "text_emb": rec.text_emb,
      "text_mask": np.asarray(rec.text_mask, bool),
      "labels": labels,
      "global_label": np.int8(glob),
      "segment_labels": np.asarray(seg, np.int8),
      "segment_ids": segments.latent_segment_ids(rec.num_frames, rec.frames_per_segment,
                                                  rec.temporal_factor, rec.causal, s).astype(np.int32),
      "eta": np.float32(rec.eta),
      "id": np.asarray(rec.id),
      **_condition(rec),
      **({"gt_latent": rec.gt_latent} if rec.gt_latent is not None else {}),
  }


def _condition(rec: schema.Record) -> dict[str, Any]:
  """An image-to-video record's `cond_latent` (and `image_emb`) for its example; {} else."""
  return {k: getattr(rec, k) for k in ("cond_latent", "image_emb") if getattr(rec, k) is not None}


def video_example(rec: schema.VideoRecord) -> dict[str, Any]:
  """A video record -> `{latent [T', H, W, C], text_emb [L, D], text_mask [L], id}`, floats in
  their stored dtypes (the train step casts them to float32 on device)."""
  if not isinstance(rec, schema.VideoRecord):
    raise TypeError(f"expected a VideoRecord, got {type(rec).__name__}")
  return {
      "latent": rec.latent,
      "text_emb": rec.text_emb,
      "text_mask": np.asarray(rec.text_mask, bool),
      "id": np.asarray(rec.id),
      **_condition(rec),
  }


def _finish(ds: grain.MapDataset, batch_size: int, read_threads: int, prefetch_buffer_size: int,
            drop_remainder: bool) -> grain.IterDataset:
  read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
  return ds.to_iter_dataset(read).batch(batch_size, drop_remainder=drop_remainder)


def pair_dataset(source, *, batch_size: int, seed: int, mode: str = "dense",
                 min_nontie_frac: float = 0.2, filter_pairs: bool = True,
                 num_epochs: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, read_threads: int = 2,
                 prefetch_buffer_size: int = 16, drop_remainder: bool = True,
                 shuffle: bool = True) -> grain.IterDataset:
  """Batches of preference pairs for DPO (see the module doc for the batch layout).

  Args:
    source: random-access source of pair `RawRecord`s.
    batch_size: pairs a batch on this process.
    seed: shuffle seed, the same on every process.
    mode: 'dense' (DenseDPO: latent-frame labels) or 'global' (Vanilla /
      Structural DPO: the global label on every frame).
    min_nontie_frac: dense filter threshold (share of non-tie segments must be
      strictly greater).
    filter_pairs: apply the mode's filter.
    num_epochs: None repeats forever.
    process_index, process_count: default to jax's.
    read_threads: grain read threads (0: read in the consuming thread).
    prefetch_buffer_size: elements read ahead per process.
    drop_remainder: drop a last partial batch (keeps shapes static for jit).
    shuffle: shuffle every epoch (False: source order, e.g. for export).
  """
  if mode not in PAIR_MODES:
    raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}")
  _check_kind(source, "pair")
  ds = records_dataset(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count,
                       shard_block=batch_size)
  if filter_pairs:
    require_a_kept_pair(source, mode, min_nontie_frac)
    ds = ds.filter(functools.partial(keep_pair, mode=mode, min_nontie_frac=min_nontie_frac))
  ds = ds.map(functools.partial(pair_example, mode=mode))
  return _finish(ds, batch_size, read_threads, prefetch_buffer_size, drop_remainder)


def video_dataset(source, *, batch_size: int, seed: int, num_epochs: Optional[int] = None,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  read_threads: int = 2, prefetch_buffer_size: int = 16,
                  drop_remainder: bool = True, shuffle: bool = True) -> grain.IterDataset:
  """Batches of videos for flow-matching pretraining / SFT (arguments as pair_dataset)."""
  _check_kind(source, "video")
  ds = records_dataset(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count,
                       shard_block=batch_size)
  ds = ds.map(video_example)
  return _finish(ds, batch_size, read_threads, prefetch_buffer_size, drop_remainder)

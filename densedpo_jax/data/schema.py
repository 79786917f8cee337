"""The two record kinds the trainer reads, and their validation.

A `VideoRecord` is one clip's precomputed latent (pretraining / SFT data, and the
ground truth of guided pairs). A `PairRecord` is two latents generated for the
same prompt, with optional preference labels. Both hold NumPy arrays; the byte
format lives in `codec.py`.

Shapes:
  text_emb   [L, D]  floating (T5-like token embeddings)
  text_mask  [L]     bool (True on real tokens)
  latent     [T', H, W, C] floating, T' latent frames of a `num_frames`-frame clip
  segment_labels [S] int8 in {-1, 0, +1}; +1: `latent_a` wins the segment,
                     -1: `latent_b` wins, 0: tie. S is ceil or floor of
                     num_frames / frames_per_segment (segments.py).
  global_label       int in {-1, 0, +1}, same sign convention.
  cond_latent [T' or 1, H, W, C] floating, optional: an image-to-video record's condition, the
                     normalised VAE latent of its first frame (followed by mid-grey frames: T'
                     frames; alone: 1 frame), shared by both members of a pair
                     (model/conditioning.py)
  image_emb  [N, D_img] floating, optional: the first frame's CLIP features (Wan 2.1 I2V)

`latent_dtype` ('float32' | 'bfloat16' | 'float16') is the dtype the latents are
stored in; encoding casts to it and decoding returns arrays of exactly that dtype.

Every check raises `RecordError`, whose message names the file, the record index
and the field, e.g. ``pairs-00003-of-00008.array_record, record 17, field
'segment_labels': values must be in {-1, 0, 1}, got [2]``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Union

import ml_dtypes
import numpy as np

from densedpo_jax import console
from densedpo_jax.data import segments

SCHEMA_VERSION = 1
LATENT_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
PAIR_SOURCES = ("vanilla", "guided")
LABEL_VALUES = (-1, 0, 1)


class RecordError(console.JobError, ValueError):
  """A malformed record; `path`, `index` and `field` say where."""

  def __init__(self, field: str, message: str, path: Optional[str] = None, index: Optional[int] = None):
    self.field, self.path, self.index, self.message = field, path, index, message
    where = f"{path or '<memory>'}, record {'?' if index is None else index}, field {field!r}"
    super().__init__(f"{where}: {message}")

  def at(self, path: Optional[str], index: Optional[int]) -> "RecordError":
    """The same error located at `path` / `index` (filled in by readers)."""
    return RecordError(self.field, self.message, path if path is not None else self.path,
                       index if index is not None else self.index)


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One clip: prompt, text embedding and latent, with the clip's timing metadata.

  Attributes:
    id: unique within a dataset.
    prompt: the text.
    text_emb: `[L, D]` floating.
    text_mask: `[L]` bool.
    latent: `[T', H, W, C]` floating.
    num_frames: pixel frames of the clip (T' follows from it, see segments.py).
    fps: pixel frames a second.
    temporal_factor: r of the video autoencoder (1: pixel space / identity).
    causal: causal autoencoder (latent 0 covers pixel frame 0 alone).
    latent_dtype: storage dtype of `latent` (and `cond_latent`), a key of LATENT_DTYPES.
    metadata: free-form JSON-serialisable extras (e.g. ShapesWorld scene).
    cond_latent, image_emb: the image-to-video condition (module doc), or None.
  """
  id: str
  prompt: str
  text_emb: np.ndarray
  text_mask: np.ndarray
  latent: np.ndarray
  num_frames: int
  fps: float
  temporal_factor: int = 1
  causal: bool = True
  latent_dtype: str = "float32"
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  cond_latent: Optional[np.ndarray] = None
  image_emb: Optional[np.ndarray] = None

  KIND = "video"
  ARRAYS = ("text_emb", "text_mask", "latent", "cond_latent", "image_emb")


@dataclasses.dataclass(frozen=True)
class PairRecord:
  """Two latents for one prompt (a preference pair), labels optional.

  Attributes:
    id, prompt, text_emb, text_mask, num_frames, fps, temporal_factor, causal,
    latent_dtype, metadata: as in VideoRecord (shared by both members).
    latent_a, latent_b: `[T', H, W, C]` floating, same shape.
    source: 'vanilla' (independent noises, Algo. 1) or 'guided' (SDEdit from a
      ground-truth video, Algo. 2).
    eta: guidance level in (0, 1) for guided pairs; NaN for vanilla.
    seed_a, seed_b: the noise seeds of each member.
    frames_per_segment: pixel frames a labeled segment.
    segment_labels: `[S]` int8 in {-1, 0, +1} or None before labeling.
    global_label: -1, 0 or +1, or None before labeling.
    gt_video_id: id of the ground-truth VideoRecord (guided pairs), else None.
    labeler: name of who labeled it (e.g. 'shapesworld_oracle', 'human'), or None.
    labeler_params: labeler version and parameters (JSON-serialisable).
    cond_latent, image_emb: the image-to-video condition both members share, or None.
    gt_latent: `[T', H, W, C]` the ground-truth latent a guided pair was made from, stored when
      asked (`pairs.store_gt`: for a flow-matching term on it, `dpo.gt_lambda`), else None.
  """
  id: str
  prompt: str
  text_emb: np.ndarray
  text_mask: np.ndarray
  latent_a: np.ndarray
  latent_b: np.ndarray
  num_frames: int
  fps: float
  frames_per_segment: int
  source: str = "vanilla"
  eta: float = math.nan
  seed_a: int = 0
  seed_b: int = 0
  temporal_factor: int = 1
  causal: bool = True
  segment_labels: Optional[np.ndarray] = None
  global_label: Optional[int] = None
  gt_video_id: Optional[str] = None
  labeler: Optional[str] = None
  labeler_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  latent_dtype: str = "float32"
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  cond_latent: Optional[np.ndarray] = None
  image_emb: Optional[np.ndarray] = None
  gt_latent: Optional[np.ndarray] = None

  KIND = "pair"
  ARRAYS = ("text_emb", "text_mask", "latent_a", "latent_b", "segment_labels", "cond_latent",
            "image_emb", "gt_latent")

  @property
  def num_segments(self) -> int:
    """S: labels there are or would be (ceil(num_frames / frames_per_segment) unlabeled)."""
    if self.segment_labels is not None:
      return int(np.shape(self.segment_labels)[0])
    return segments.default_num_segments(self.num_frames, self.frames_per_segment)


Record = Union[VideoRecord, PairRecord]
RECORD_TYPES: dict[str, type] = {"video": VideoRecord, "pair": PairRecord}


def _err(field, message, path, index):
  return RecordError(field, message, path, index)


def _check_int(value, field, path, index, minimum=None):
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise _err(field, f"must be an int, got {value!r}", path, index)
  if minimum is not None and value < minimum:
    raise _err(field, f"must be >= {minimum}, got {value}", path, index)


# dtype -> (unsigned view, exponent mask): a value is NaN or Inf exactly when its exponent bits are
# all ones.
EXPONENT_BITS = {"bfloat16": (np.uint16, 0x7F80), "float16": (np.uint16, 0x7C00),
                 "float32": (np.uint32, 0x7F800000), "float64": (np.uint64, 0x7FF0000000000000)}


def check_finite(x: np.ndarray, field: str, path: Optional[str] = None,
                 index: Optional[int] = None) -> None:
  """RecordError naming the field, how many values are NaN or Inf and the first one's index.
  Costs one pass over the array (benchmarks/data_pipeline.py measures its share of decoding)."""
  bits = EXPONENT_BITS.get(x.dtype.name)
  if x.size == 0 or (x.size >= 65536 and bits is not None and x.flags.c_contiguous and
                     x.dtype.isnative and (x.view(bits[0]) & bits[1]).max() < bits[1]):
    return  # Large arrays: no value has an all-ones exponent (8x np.isfinite on bfloat16).
  finite = np.isfinite(x)
  if not finite.all():
    bad = np.argwhere(~finite)
    raise _err(field, f"holds {len(bad)} non-finite value(s) (NaN or Inf), the first at index "
               f"{tuple(int(i) for i in bad[0])}", path, index)


def _check_array(rec, field, ndim, path, index, kind=None):
  x = getattr(rec, field)
  if not isinstance(x, np.ndarray):
    raise _err(field, f"must be a numpy array, got {type(x).__name__}", path, index)
  if x.ndim != ndim:
    raise _err(field, f"must have {ndim} dims, got shape {x.shape}", path, index)
  if kind == "float" and not (np.issubdtype(x.dtype, np.floating) or x.dtype == LATENT_DTYPES["bfloat16"]):
    raise _err(field, f"must be floating, got dtype {x.dtype}", path, index)
  if kind == "float":  # A NaN here would surface steps later as a NaN loss naming no record.
    check_finite(x, field, path, index)
  if kind == "bool" and x.dtype != np.bool_:
    raise _err(field, f"must be bool, got dtype {x.dtype}", path, index)
  return x


def _check_common(rec: Record, latent_fields, path, index) -> None:
  """Checks shared by both kinds: text, timing metadata, latent shapes."""
  for field in ("id", "prompt"):
    if not isinstance(getattr(rec, field), str):
      raise _err(field, f"must be a str, got {type(getattr(rec, field)).__name__}", path, index)
  if not rec.id:
    raise _err("id", "must not be empty", path, index)
  emb = _check_array(rec, "text_emb", 2, path, index, "float")
  mask = _check_array(rec, "text_mask", 1, path, index, "bool")
  if mask.shape[0] != emb.shape[0]:
    raise _err("text_mask", f"length {mask.shape[0]} != text_emb length {emb.shape[0]}", path, index)
  _check_int(rec.num_frames, "num_frames", path, index, minimum=1)
  _check_int(rec.temporal_factor, "temporal_factor", path, index, minimum=1)
  if not isinstance(rec.causal, (bool, np.bool_)):
    raise _err("causal", f"must be a bool, got {rec.causal!r}", path, index)
  if not isinstance(rec.fps, (int, float, np.number)) or not rec.fps > 0:
    raise _err("fps", f"must be a positive number, got {rec.fps!r}", path, index)
  if rec.latent_dtype not in LATENT_DTYPES:
    raise _err("latent_dtype", f"must be one of {sorted(LATENT_DTYPES)}, got {rec.latent_dtype!r}",
               path, index)
  try:
    t = segments.num_latent_frames(rec.num_frames, rec.temporal_factor, rec.causal)
  except ValueError as e:
    raise _err("num_frames", str(e), path, index) from None
  for field in latent_fields:
    x = _check_array(rec, field, 4, path, index, "float")
    if x.shape[0] != t:
      raise _err(field, f"has {x.shape[0]} latent frames, expected {t} for num_frames={rec.num_frames}, "
                 f"temporal_factor={rec.temporal_factor}, causal={rec.causal}", path, index)
  if not isinstance(rec.metadata, Mapping):
    raise _err("metadata", f"must be a mapping, got {type(rec.metadata).__name__}", path, index)
  _check_condition(rec, getattr(rec, latent_fields[0]).shape, path, index)


def _check_condition(rec: Record, shape: tuple[int, ...], path, index) -> None:
  """`cond_latent` `[T' or 1, H, W, C]` of the latent's `H, W, C`; `image_emb` `[N, D]` only
  with a `cond_latent`."""
  if rec.cond_latent is not None:
    cond = _check_array(rec, "cond_latent", 4, path, index, "float")
    if cond.shape[1:] != shape[1:] or cond.shape[0] not in (1, shape[0]):
      raise _err("cond_latent", f"has shape {cond.shape}; expected [{shape[0]} or 1, "
                 f"{', '.join(map(str, shape[1:]))}] (the latent is {shape})", path, index)
  if rec.image_emb is not None:
    _check_array(rec, "image_emb", 2, path, index, "float")
    if rec.cond_latent is None:
      raise _err("image_emb", "given without a cond_latent (the image-to-video condition)",
                 path, index)


def validate_video(rec: VideoRecord, path: Optional[str] = None, index: Optional[int] = None) -> VideoRecord:
  """Returns `rec` if well-formed, else raises RecordError naming path, index and field."""
  _check_common(rec, ("latent",), path, index)
  return rec


def _check_label_values(values: np.ndarray, field, path, index):
  out_of_range = (values < -1) | (values > 1)
  if out_of_range.any():
    bad = np.unique(values[out_of_range])
    raise _err(field, f"values must be in {{-1, 0, 1}}, got {bad.tolist()}", path, index)


def validate_pair(rec: PairRecord, path: Optional[str] = None, index: Optional[int] = None) -> PairRecord:
  """Returns `rec` if well-formed, else raises RecordError naming path, index and field."""
  _check_common(rec, ("latent_a", "latent_b"), path, index)
  if rec.latent_b.shape != rec.latent_a.shape:
    raise _err("latent_b", f"shape {rec.latent_b.shape} != latent_a shape {rec.latent_a.shape}", path, index)
  if rec.latent_b.dtype != rec.latent_a.dtype:
    raise _err("latent_b", f"dtype {rec.latent_b.dtype} != latent_a dtype {rec.latent_a.dtype}", path, index)
  if rec.source not in PAIR_SOURCES:
    raise _err("source", f"must be one of {PAIR_SOURCES}, got {rec.source!r}", path, index)
  if not isinstance(rec.eta, (int, float, np.floating)):
    raise _err("eta", f"must be a float, got {rec.eta!r}", path, index)
  if rec.source == "vanilla" and not math.isnan(rec.eta):
    raise _err("eta", f"must be NaN for a vanilla pair, got {rec.eta}", path, index)
  if rec.source == "guided":
    if not 0.0 < rec.eta < 1.0:
      raise _err("eta", f"must be in (0, 1) for a guided pair, got {rec.eta}", path, index)
    if not rec.gt_video_id or not isinstance(rec.gt_video_id, str):
      raise _err("gt_video_id", "a guided pair needs the id of its ground-truth video", path, index)
  if rec.gt_latent is not None:
    gt = _check_array(rec, "gt_latent", 4, path, index, "float")
    if gt.shape != rec.latent_a.shape:
      raise _err("gt_latent", f"shape {gt.shape} != latent_a shape {rec.latent_a.shape}", path, index)
  for field in ("seed_a", "seed_b"):
    _check_int(getattr(rec, field), field, path, index)
  _check_int(rec.frames_per_segment, "frames_per_segment", path, index, minimum=1)
  if rec.segment_labels is not None:
    labels = _check_array(rec, "segment_labels", 1, path, index)
    if labels.dtype != np.int8:
      raise _err("segment_labels", f"must be int8, got dtype {labels.dtype}", path, index)
    _check_label_values(labels, "segment_labels", path, index)
    try:
      segments.check_num_segments(rec.num_frames, rec.frames_per_segment, labels.shape[0])
    except ValueError as e:
      raise _err("segment_labels", str(e), path, index) from None
  if rec.global_label is not None:
    _check_int(rec.global_label, "global_label", path, index)
    _check_label_values(np.asarray([rec.global_label]), "global_label", path, index)
  for field in ("labeler", "gt_video_id"):
    value = getattr(rec, field)
    if value is not None and not isinstance(value, str):
      raise _err(field, f"must be a str or None, got {value!r}", path, index)
  if not isinstance(rec.labeler_params, Mapping):
    raise _err("labeler_params", f"must be a mapping, got {type(rec.labeler_params).__name__}", path, index)
  return rec


def validate(rec: Record, path: Optional[str] = None, index: Optional[int] = None) -> Record:
  """Validates either kind of record (see validate_video / validate_pair)."""
  if isinstance(rec, PairRecord):
    return validate_pair(rec, path, index)
  if isinstance(rec, VideoRecord):
    return validate_video(rec, path, index)
  raise _err("kind", f"not a record: {type(rec).__name__}", path, index)


def latent_shape(rec: Record) -> tuple[int, ...]:
  """`(T', H, W, C)` of a record's latent(s)."""
  return tuple((rec.latent_a if isinstance(rec, PairRecord) else rec.latent).shape)


def shape_signature(rec: Record) -> dict[str, Any]:
  """The fields a dataset's records must agree on (written to the shard sidecar)."""
  sig = {
      "kind": rec.KIND,
      "latent_shape": list(latent_shape(rec)),
      "latent_dtype": rec.latent_dtype,
      "text_shape": list(rec.text_emb.shape),
      "num_frames": int(rec.num_frames),
      "temporal_factor": int(rec.temporal_factor),
      "causal": bool(rec.causal),
  }
  if isinstance(rec, PairRecord):
    sig["frames_per_segment"] = int(rec.frames_per_segment)
  if rec.cond_latent is not None:  # Image-to-video records: every record has the same condition.
    sig["cond_shape"] = list(rec.cond_latent.shape)
  if rec.image_emb is not None:
    sig["image_emb_shape"] = list(rec.image_emb.shape)
  if getattr(rec, "gt_latent", None) is not None:  # Every pair carries its ground truth, or none.
    sig["gt_latent"] = True
  return sig

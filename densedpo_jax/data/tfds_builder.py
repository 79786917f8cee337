"""TFDS builders of video records, stored as ArrayRecord for grain's random access.

`ShapesWorldVideos` renders the ShapesWorld ground-truth videos (the latent IS the
video: identity autoencoder, temporal factor 1). Generation is procedural, so
`download_and_prepare` downloads nothing; it runs once and is a no-op after:

    src = shapesworld_source("train", data_dir="/tmp/tfds", config="tiny")
    ds = pipeline.video_dataset(src, batch_size=16, seed=0)
    # or plain TFDS:
    ds = tfds.data_source("shapes_world_videos/tiny", split="train", data_dir=...)

Splits: 'train' (training prompts) and 'heldout' (the held-out colour x shape x
direction combinations, world.is_heldout).

Your own precomputed latents: the same builder pattern, two ways.
  1. `LatentFolderVideos` (no code): put one `.npz` per clip under
     `<manual_dir>/<split>/<id>.npz` with arrays `latent [T', H, W, C]`,
     `text_emb [L, D]`, `text_mask [L]` and scalars `prompt`, `num_frames`,
     `fps`, `temporal_factor`, `causal` (optional `metadata`: a JSON string), then
         builder = LatentFolderVideos(data_dir=out_dir)
         builder.download_and_prepare(
             download_config=tfds.download.DownloadConfig(manual_dir=latents_dir))
         src = TfdsSource(builder, "train")
     Every subfolder becomes a split. Shapes may differ between datasets (the
     features have dynamic shapes); latents are stored as float32, or float16
     with `config="float16"`.
  2. Subclass `VideoRecordsBuilder`, implement `_split_names` and
     `_video_records(split)` (yield `schema.VideoRecord`s from wherever your
     latents live), and use it exactly like ShapesWorldVideos.
For bfloat16 storage or pair records, write `arrayrecord_io` shards instead (the
pipelines read both kinds of source).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Iterator, Sequence, Union

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from densedpo_jax import console
from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import schema
from densedpo_jax.shapesworld import text_encoder as text_encoder_lib
from densedpo_jax.shapesworld import world

_BYTES = tfds.features.Encoding.BYTES
_TFDS_LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}  # TFDS has no bfloat16


def video_features(latent_shape=(None, None, None, None), text_shape=(None, None),
                   latent_dtype: str = "float32") -> tfds.features.FeaturesDict:
  """TFDS features of a VideoRecord (None dims: dynamic shapes)."""
  if latent_dtype not in _TFDS_LATENT_DTYPES:
    raise ValueError(f"TFDS latent_dtype must be one of {sorted(_TFDS_LATENT_DTYPES)}, got {latent_dtype!r}")
  scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)  # pylint: disable=unnecessary-lambda-assignment
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "prompt": tfds.features.Text(),
      "text_emb": tfds.features.Tensor(shape=tuple(text_shape), dtype=np.float32, encoding=_BYTES),
      "text_mask": tfds.features.Tensor(shape=tuple(text_shape[:1]), dtype=np.bool_, encoding=_BYTES),
      "latent": tfds.features.Tensor(shape=tuple(latent_shape), dtype=_TFDS_LATENT_DTYPES[latent_dtype],
                                     encoding=_BYTES),
      "num_frames": scalar(np.int32),
      "fps": scalar(np.float32),
      "temporal_factor": scalar(np.int32),
      "causal": scalar(np.bool_),
      "latent_dtype": tfds.features.Text(),
      "metadata": tfds.features.Text(),  # JSON
  })


def video_to_example(rec: schema.VideoRecord) -> dict:
  """VideoRecord -> a dict for `video_features` (validated first)."""
  schema.validate_video(rec)
  return {
      "id": rec.id, "prompt": rec.prompt,
      "text_emb": np.asarray(rec.text_emb, np.float32), "text_mask": np.asarray(rec.text_mask, bool),
      "latent": np.asarray(rec.latent, _TFDS_LATENT_DTYPES[rec.latent_dtype]),
      "num_frames": rec.num_frames, "fps": rec.fps, "temporal_factor": rec.temporal_factor,
      "causal": rec.causal, "latent_dtype": rec.latent_dtype, "metadata": json.dumps(dict(rec.metadata)),
  }


class VideoRecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of builders whose examples are VideoRecords; stored as ArrayRecord by default.

  Subclasses implement `_split_names()`, `_video_records(split)` and optionally
  `_shapes()` -> (latent_shape, text_shape, latent_dtype) for static shapes.
  """

  def __init__(self, *, file_format: Union[str, None] = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9's default probes `importlib_resources` (a backport TFDS only installs on
    # Python < 3.9) for packages installed in editable mode; the source file is all it needs.
    return epath.Path(inspect.getfile(cls))

  def _shapes(self):
    return (None, None, None, None), (None, None), "float32"

  def _split_names(self) -> Sequence[str]:
    raise NotImplementedError

  def _video_records(self, split: str) -> Iterator[schema.VideoRecord]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    latent_shape, text_shape, dtype = self._shapes()
    return self.dataset_info_from_configs(features=video_features(latent_shape, text_shape, dtype),
                                          description=(self.__doc__ or "").strip().splitlines()[0])

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self._split_names()}

  def _generate_examples(self, split):
    for rec in self._video_records(split):
      yield rec.id, video_to_example(rec)


@dataclasses.dataclass
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """ShapesWorld sizes (see world.WorldConfig) and how many videos a split."""
  num_frames: int = 16
  height: int = 16
  width: int = 16
  fps: float = 8.0
  radius: float = 3.0
  speed_range: tuple = (0.2, 1.5)
  text_len: int = 16
  text_dim: int = 64
  num_train: int = 4096
  num_heldout: int = 512
  seed: int = 0
  latent_dtype: str = "float32"

  @property
  def world(self) -> world.WorldConfig:
    return world.WorldConfig(num_frames=self.num_frames, height=self.height, width=self.width,
                             fps=self.fps, radius=self.radius, speed_range=tuple(self.speed_range))

  @property
  def encoder(self) -> text_encoder_lib.HashTextEncoder:
    return text_encoder_lib.HashTextEncoder(max_len=self.text_len, dim=self.text_dim)


def shapesworld_video(index: int, split: str, config: ShapesWorldConfig) -> schema.VideoRecord:
  """Video `index` of a ShapesWorld split, deterministically (seed from config.seed, split, index)."""
  split_key = {"train": 0, "heldout": 1}[split]
  seed = int(np.random.SeedSequence([config.seed, split_key, index]).generate_state(1)[0])
  video, scene = world.generate(seed, config.world, split)
  emb, mask = config.encoder(scene.prompt)
  return schema.VideoRecord(
      id=f"sw-{split}-{index:07d}", prompt=scene.prompt, text_emb=emb, text_mask=mask,
      latent=video.astype(schema.LATENT_DTYPES[config.latent_dtype]), num_frames=config.num_frames,
      fps=float(config.fps), temporal_factor=1, causal=True, latent_dtype=config.latent_dtype,
      metadata={"seed": seed, "colour": scene.colour, "shape": scene.shape,
                "direction": scene.direction, "speed": scene.speed, "start": list(scene.start)})


class ShapesWorldVideos(VideoRecordsBuilder):
  """ShapesWorld ground-truth videos (procedural; the latent is the RGB video in [-1, 1])."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapesWorldConfig(name="default", description="16 frames of 16x16, 4096 train / 512 held-out"),
      ShapesWorldConfig(name="tiny", num_train=32, num_heldout=8, description="for tests and demos"),
  ]

  def _shapes(self):
    c = self.builder_config
    return (c.num_frames, c.height, c.width, 3), (c.text_len, c.text_dim), c.latent_dtype

  def _split_names(self):
    return ("train", "heldout")

  def _video_records(self, split):
    c = self.builder_config
    n = c.num_train if split == "train" else c.num_heldout
    for i in range(n):
      yield shapesworld_video(i, split, c)


@dataclasses.dataclass
class LatentFolderConfig(tfds.core.BuilderConfig):
  latent_dtype: str = "float32"


class LatentFolderVideos(VideoRecordsBuilder):
  """Precomputed latents from `<manual_dir>/<split>/<id>.npz` (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [LatentFolderConfig(name="float32"), LatentFolderConfig(name="float16", latent_dtype="float16")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put one <id>.npz per clip in <manual_dir>/<split>/ with arrays latent, "
                                  "text_emb, text_mask and scalars prompt, num_frames, fps, temporal_factor, "
                                  "causal (optional metadata: JSON string).")

  def _shapes(self):
    return (None, None, None, None), (None, None), self.builder_config.latent_dtype

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not splits:
      raise FileNotFoundError(f"no split folders in {root}: expected {root}/<split>/<id>.npz")
    self._root = root
    return {split: self._generate_examples(split) for split in splits}

  def _video_records(self, split):
    folder = os.path.join(self._root, split)
    for index, fname in enumerate(sorted(f for f in os.listdir(folder) if f.endswith(".npz"))):
      path = os.path.join(folder, fname)
      with np.load(path, allow_pickle=False) as z:
        try:
          meta = str(z["metadata"]) if "metadata" in z else "{}"
          rec = schema.VideoRecord(
              id=fname[:-4], prompt=str(z["prompt"]), text_emb=z["text_emb"].astype(np.float32),
              text_mask=z["text_mask"].astype(bool),
              latent=z["latent"].astype(_TFDS_LATENT_DTYPES[self.builder_config.latent_dtype]),
              num_frames=int(z["num_frames"]), fps=float(z["fps"]), temporal_factor=int(z["temporal_factor"]),
              causal=bool(z["causal"]), latent_dtype=self.builder_config.latent_dtype, metadata=json.loads(meta))
        except KeyError as e:
          raise schema.RecordError(str(e.args[0]), "missing from the .npz", path, index) from None
      yield schema.validate_video(rec, path, index)


class TfdsSource:
  """A TFDS split as a grain source of `RawRecord`s (for `pipeline.video_dataset`).

  Args:
    builder: a prepared builder (or a TFDS data source with `dataset_info`).
    split: split name (any TFDS split spec, e.g. 'train[:90%]').
  """

  kind = "video"

  def __init__(self, builder, split: str):
    self._source = builder.as_data_source(split=split) if hasattr(builder, "as_data_source") else builder
    self.name = f"{getattr(builder, 'name', 'tfds')}/{split}"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> arrayrecord_io.RawRecord:
    return arrayrecord_io.RawRecord(self._source[int(index)], self.name, int(index))

  def __getitems__(self, indices):
    return [arrayrecord_io.RawRecord(x, self.name, int(i))
            for x, i in zip(self._source.__getitems__([int(i) for i in indices]), indices)]

  def __repr__(self) -> str:
    return f"TfdsSource({self.name}, {len(self)} records)"


def shapesworld_source(split: str = "train", data_dir: Union[str, None] = None,
                       config: Union[str, ShapesWorldConfig] = "default") -> TfdsSource:
  """The ShapesWorld split as a grain source, generating the dataset on first use."""
  builder = ShapesWorldVideos(data_dir=data_dir, config=config)
  with console.library_output(f"TFDS preparing {builder.name}"):
    builder.download_and_prepare()  # no-op when already prepared
  return TfdsSource(builder, split)

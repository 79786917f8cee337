"""TFDS builders: ShapesWorld generated on first use, read through tfds and grain; latent folders."""
import json
import os

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from densedpo_jax.data import arrayrecord_io  # pylint: disable=g-import-not-at-top
from densedpo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from densedpo_jax.data import schema  # pylint: disable=g-import-not-at-top
from densedpo_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
from densedpo_jax.shapesworld import world  # pylint: disable=g-import-not-at-top

CONFIG = tfds_builder.ShapesWorldConfig(name="test", num_train=12, num_heldout=4, num_frames=8, height=12,
                                        width=12, radius=2.0, text_len=8, text_dim=16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_shapesworld_is_generated_once_and_readable(data_dir):
  src = tfds_builder.shapesworld_source("train", data_dir=data_dir, config=CONFIG)
  files = os.listdir(os.path.join(data_dir, "shapes_world_videos", "test", "1.0.0"))
  assert any(f.startswith("shapes_world_videos-train.array_record") for f in files)
  assert len(src) == 12
  recs = [arrayrecord_io.decode_raw(src[i]) for i in range(len(src))]
  assert sorted(r.id for r in recs) == [f"sw-train-{i:07d}" for i in range(12)]
  r = recs[0]
  assert r.latent.shape == (8, 12, 12, 3) and r.latent.dtype == np.float32
  assert r.text_emb.shape == (8, 16) and r.text_mask.dtype == bool
  assert (r.num_frames, r.fps, r.temporal_factor, r.causal) == (8, 8.0, 1, True)
  # The stored video is the world's rendering of the stored scene.
  m = r.metadata
  scene = world.Scene(m["colour"], m["shape"], m["direction"], m["speed"], tuple(m["start"]), m["seed"])
  assert scene.prompt == r.prompt
  np.testing.assert_array_equal(r.latent, world.render(scene, CONFIG.world))
  np.testing.assert_array_equal(r.text_emb, CONFIG.encoder(r.prompt)[0])
  # Deterministic: the same record regenerates bit for bit.
  again = tfds_builder.shapesworld_video(int(r.id.rsplit("-", 1)[1]), "train", CONFIG)
  np.testing.assert_array_equal(again.latent, r.latent)
  # A second call reuses the prepared files.
  mtime = os.path.getmtime(os.path.join(data_dir, "shapes_world_videos", "test", "1.0.0", "dataset_info.json"))
  tfds_builder.shapesworld_source("train", data_dir=data_dir, config=CONFIG)
  assert os.path.getmtime(os.path.join(data_dir, "shapes_world_videos", "test", "1.0.0",
                                       "dataset_info.json")) == mtime


def test_heldout_split_holds_only_heldout_prompts(data_dir):
  src = tfds_builder.shapesworld_source("heldout", data_dir=data_dir, config=CONFIG)
  prompts = {arrayrecord_io.decode_raw(src[i]).prompt for i in range(len(src))}
  assert len(src) == 4 and prompts <= set(world.prompts("heldout"))


def test_tfds_data_source_and_grain_pipeline(data_dir):
  tfds_builder.shapesworld_source("train", data_dir=data_dir, config=CONFIG)
  ds = tfds.data_source("shapes_world_videos", split="train", data_dir=data_dir,
                        builder_kwargs={"config": CONFIG})
  assert len(ds) == 12 and ds[0]["latent"].shape == (8, 12, 12, 3)
  builder = tfds_builder.ShapesWorldVideos(data_dir=data_dir, config=CONFIG)
  batches = list(pipeline.video_dataset(tfds_builder.TfdsSource(builder, "train"), batch_size=4, seed=0,
                                        num_epochs=1))
  assert len(batches) == 3 and batches[0]["latent"].shape == (4, 8, 12, 12, 3)
  assert sorted(i for b in batches for i in b["id"]) == [f"sw-train-{i:07d}" for i in range(12)]


def test_latent_folder_builder(tmp_path):
  manual = tmp_path / "latents"
  rng = np.random.default_rng(0)
  for split, n in (("train", 3), ("val", 2)):
    (manual / split).mkdir(parents=True)
    for i in range(n):
      np.savez(manual / split / f"clip{i}.npz", latent=rng.standard_normal((4, 3, 5, 2)).astype(np.float32),
               text_emb=rng.standard_normal((6, 8)).astype(np.float32), text_mask=np.arange(6) < 4,
               prompt=f"clip {i}", num_frames=13, fps=24.0, temporal_factor=4, causal=True,
               metadata=json.dumps({"source": "test"}))
  builder = tfds_builder.LatentFolderVideos(data_dir=str(tmp_path / "out"), config="float16")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert set(builder.info.splits) == {"train", "val"}
  src = tfds_builder.TfdsSource(builder, "train")
  recs = sorted((arrayrecord_io.decode_raw(src[i]) for i in range(len(src))), key=lambda r: r.id)
  assert [r.id for r in recs] == ["clip0", "clip1", "clip2"]
  assert recs[0].latent.dtype == np.float16 and recs[0].latent.shape == (4, 3, 5, 2)
  assert recs[0].metadata == {"source": "test"} and recs[0].num_frames == 13
  want = np.load(manual / "train" / "clip0.npz")["latent"].astype(np.float16)
  np.testing.assert_array_equal(recs[0].latent, want)


def test_latent_folder_rejects_an_inconsistent_clip(tmp_path):
  manual = tmp_path / "latents" / "train"
  manual.mkdir(parents=True)
  np.savez(manual / "bad.npz", latent=np.zeros((4, 2, 2, 2), np.float32), text_emb=np.zeros((3, 4), np.float32),
           text_mask=np.ones(3, bool), prompt="x", num_frames=12, fps=24.0, temporal_factor=4, causal=True)
  builder = tfds_builder.LatentFolderVideos(data_dir=str(tmp_path / "out"))
  with pytest.raises(schema.RecordError, match=r"bad\.npz, record 0, field 'num_frames'"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "latents")))

"""Fixtures shared by the tests (the environment is set in the root conftest.py)."""
import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
  """ShapesWorld train/held-out videos as record datasets (`<root>/videos`, names 'train' and
  'heldout') and a base model trained for 3 steps (`<root>/base`), shared by the end-to-end tests."""
  from configs import pretrain
  from densedpo_jax.training import train
  from densedpo_jax.data import arrayrecord_io, tfds_builder
  from tests.helpers import TINY_MODEL
  root = tmp_path_factory.mktemp("world")
  cfg = tfds_builder.ShapesWorldConfig(name="test")
  for split, n in (("train", 12), ("heldout", 4)):
    arrayrecord_io.write_records([tfds_builder.shapesworld_video(i, split, cfg) for i in range(n)],
                                 str(root / "videos"), split, num_shards=1)
  base = pretrain.get_config("quick")
  base.model.update(**TINY_MODEL)
  base.data.update(kind="videos", path=str(root / "videos"), name="train", batch_size=4,
                   read_threads=0)
  base.update(total_steps=3, log_every=1, checkpoint_every=3, async_checkpointing=False)
  base.mesh.num_devices = 1
  train.train_and_evaluate(base, str(root / "base"))
  return root


@pytest.fixture
def vlm_server():
  """`make(**kw) -> tests.vlm_server.Server`, a scripted VLM on 127.0.0.1; all closed after."""
  from tests.vlm_server import Server
  servers = []

  def make(**kw):
    servers.append(Server(**kw))
    return servers[-1]
  yield make
  for s in servers:
    s.close()

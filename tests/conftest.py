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


@pytest.fixture
def annotation_pairs(tmp_path):
  """A pair dataset `<dir>/pairs` of 6 pairs (4 frames, 2 segments of 2) for the annotation page."""
  from tests.helpers import write_pairs
  return write_pairs(str(tmp_path / "pairs"), n=6)


@pytest.fixture
def annotation_server(annotation_pairs, tmp_path):
  """`open(items=None, out="labels.jsonl", **store_kw) -> (store, url)`: annotation servers over
  `annotation_pairs` (or `items`) on 127.0.0.1, labels in `tmp_path / out`; all shut down after."""
  from densedpo_jax.annotate.store import Store, items_from_dataset
  from tests.helpers import serve_in_thread
  servers = []

  def open_server(items=None, out="labels.jsonl", **kw):
    store = Store(items or items_from_dataset(annotation_pairs, "pairs"), str(tmp_path / out), **kw)
    server, url = serve_in_thread(store)
    servers.append(server)
    return store, url
  yield open_server
  for s in servers:
    s.shutdown()
    s.server_close()

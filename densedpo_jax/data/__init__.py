"""The data layer: record schema, ArrayRecord shards, TFDS builders, Grain pipelines, labels.

  schema          VideoRecord / PairRecord, validation (RecordError names file, record, field)
  codec           exact byte encoding (bfloat16 / float16 latent storage)
  arrayrecord_io  atomic sharded writer + JSON sidecar, random-access ShardedSource
  tfds_builder    ShapesWorldVideos / LatentFolderVideos TFDS builders, TfdsSource
                  (imports tensorflow_datasets: import it explicitly)
  pipeline        grain pipelines: video_dataset, pair_dataset (checkpointable iterators)
  labels_io       JSON Lines label import / export
  summary         counts, shapes and label statistics (also a CLI)
"""
from densedpo_jax.data.arrayrecord_io import ShardedSource, ShardedWriter, read_sidecar, write_records
from densedpo_jax.data.pipeline import pair_dataset, video_dataset
from densedpo_jax.data.schema import PairRecord, RecordError, VideoRecord

__all__ = ["PairRecord", "RecordError", "ShardedSource", "ShardedWriter", "VideoRecord", "pair_dataset",
           "read_sidecar", "video_dataset", "write_records"]

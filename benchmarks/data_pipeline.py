"""Throughput of the pair pipeline (ArrayRecord shards -> grain -> batches).

    python -m benchmarks.data_pipeline                 # both sizes, 1 and 2 read threads
    python -m benchmarks.data_pipeline --sizes shapesworld --threads 1 2 4

Writes synthetic pair datasets to a temporary folder, then times the full
`pipeline.pair_dataset` (shuffle, shard, decode + validate, DenseDPO filter off,
latent-frame labels, batching; latents keep their stored dtype) after a warm-up. Sizes:

  shapesworld  latent 16 x 16 x 16 x 3 stored float32, text 16 x 64 float32
  paper        latent 13 x 60 x 104 x 16 stored bfloat16 (CogVideoX-like 49 frames,
               causal r = 4), text 226 x 4096 (T5-XXL) stored bfloat16

records/s counts pairs; "stored MB/s" is encoded record bytes read a second,
"out MB/s" the batch bytes produced. The shards sit in the page cache
after writing, so this measures the pipeline's CPU cost, not the disk. The last columns time
validation's finiteness check alone (NaN / Inf in the latents or text embedding: part of every
row's time) and its share of one read thread's time a record.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import ml_dtypes
import numpy as np

from densedpo_jax.data import arrayrecord_io
from densedpo_jax.data import pipeline
from densedpo_jax.data import schema
from densedpo_jax.data import synthetic

SIZES = {
    # name: (latent shape, text shape, latent dtype, text dtype, temporal factor, records, batch)
    "shapesworld": ((16, 16, 16, 3), (16, 64), "float32", np.float32, 1, 512, 32),
    "paper": ((13, 60, 104, 16), (226, 4096), "bfloat16", ml_dtypes.bfloat16, 4, 24, 4),
}


def _write(directory, name, latent_shape, text_shape, latent_dtype, text_dtype, r, n):
  rng = np.random.default_rng(0)

  def records():
    for i in range(n):
      rec = synthetic.random_pair(rng, f"{name}-{i}", latent_shape=latent_shape, text_shape=(2, 2),
                                  frames_per_segment=8 if r == 1 else 24, temporal_factor=r,
                                  latent_dtype=latent_dtype)
      emb = rng.standard_normal(text_shape, np.float32).astype(text_dtype)
      mask = np.arange(text_shape[0]) < text_shape[0] // 2
      yield dataclasses.replace(rec, text_emb=emb, text_mask=mask)

  side = arrayrecord_io.write_records(records(), directory, name, num_shards=8)
  total = sum(os.path.getsize(os.path.join(directory, s["file"])) for s in side["shards"])
  return total / n


def _time(src, batch, threads, min_seconds, min_batches):
  ds = pipeline.pair_dataset(src, batch_size=batch, seed=0, filter_pairs=False,
                             read_threads=threads, prefetch_buffer_size=max(2 * batch, 8))
  it = iter(ds)
  for _ in range(2):  # warm-up: thread start, first reads
    b = next(it)
  out_bytes = sum(v.nbytes for v in b.values())
  n, start = 0, time.perf_counter()
  while n < min_batches or time.perf_counter() - start < min_seconds:
    next(it)
    n += 1
  elapsed = time.perf_counter() - start
  return n * batch / elapsed, n * out_bytes / elapsed


def _finite_check_seconds(src, count: int = 8, repeats: int = 5) -> float:
  """Median seconds of validation's finiteness check (`schema.check_finite` over the latents and
  the text embedding) on one decoded record."""
  times = []
  for i in range(min(count, len(src))):
    rec = arrayrecord_io.decode_raw(src[i], validate=False)
    arrays = [rec.latent_a, rec.latent_b, rec.text_emb]
    for _ in range(repeats):
      start = time.perf_counter()
      for x in arrays:
        schema.check_finite(x, "latent")
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
  parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds a row")
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.sizes:
      latent_shape, text_shape, ldt, tdt, r, n, batch = SIZES[name]
      per_record = _write(tmp, name, latent_shape, text_shape, ldt, tdt, r, n)
      src = arrayrecord_io.ShardedSource(tmp, name)
      check = _finite_check_seconds(src)
      for threads in args.threads:
        rps, out_bps = _time(src, batch, threads, args.seconds, min_batches=5)
        rows.append((name, f"{'x'.join(map(str, latent_shape))} {ldt}", batch, threads,
                     per_record / 1e6, rps, rps * per_record / 1e6, out_bps / 1e6,
                     check * 1e3, check * rps / threads))
  print(f"host: {os.cpu_count()} CPU cores")
  head = ("size", "latent (stored)", "batch", "threads", "MB/record", "records/s", "stored MB/s",
          "out MB/s", "finite check ms/record", "its share of a thread's time")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for name, lat, batch, threads, mb, rps, smbs, ombs, check_ms, share in rows:
    print(f"| {name} | {lat} | {batch} | {threads} | {mb:.3f} | {rps:,.0f} | {smbs:,.0f} | "
          f"{ombs:,.0f} | {check_ms:.3f} | {share:.0%} |")


if __name__ == "__main__":
  main()

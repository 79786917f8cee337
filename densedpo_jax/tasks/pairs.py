"""Preference-pair generation (task=pairs) from a trained model and a dataset of video records.

  vanilla (Algo. 1)  two independent full sampling runs per prompt
  guided  (Algo. 2)  two SDEdit runs from the ground-truth latent, noised to t = eta; eta is
                     fixed (`eta_range` with lo == hi: the loop costs about eta of a full run)
                     or drawn per pair from `eta_range` (one batch costs about its largest eta)

The output is a pair-record dataset `<out_dir>/<name>` (unlabeled; task=label adds labels).
It is written in parts of `pairs_per_part` pairs, each committed atomically under
`<out_dir>/parts/`, so an interrupted run resumes at the first missing part; when all parts
exist, one sidecar joins them into the dataset (nothing is copied). Works for any dataset of
video records, not only ShapesWorld; each process of a multi-host job writes every
`process_count`-th part, with the batch split over its local devices, and process 0 joins the
parts once every process has committed its own (a barrier; `out_dir` must be shared).
"""
from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from densedpo_jax import distributed
from densedpo_jax.objectives import flow, sampling
from densedpo_jax.data import arrayrecord_io, schema
from densedpo_jax.data.parts import Parts
from densedpo_jax.training.builders import make_source, model_config
from densedpo_jax.model import LoRAConfig, build, conditioning

MODES = ("vanilla", "guided")


def pair_seeds(base_seed: int, index: int) -> tuple[int, int]:
  """Noise seeds (< 2**31) of both members of pair `index`: deterministic, distinct."""
  a, b = np.random.SeedSequence([base_seed, index]).generate_state(2) % (2 ** 31)
  return int(a), int(b)


def check_eta_range(eta_range) -> tuple[float, float]:
  lo, hi = float(eta_range[0]), float(eta_range[1])
  if not 0.0 < lo <= hi < 1.0:
    raise ValueError(f"config.pairs.eta_range={tuple(eta_range)}: expected 0 < lo <= hi < 1")
  return lo, hi


def draw_eta(base_seed: int, index: int, eta_range) -> float:
  """The guidance level of pair `index`: fixed when lo == hi, else uniform in [lo, hi]."""
  lo, hi = check_eta_range(eta_range)
  if lo == hi:
    return lo
  rng = np.random.default_rng(np.random.SeedSequence([base_seed, index, 1]))
  return float(rng.uniform(lo, hi))


def make_pair_sampler(model, spec: ml_collections.ConfigDict, mode: str,
                      fixed_eta: float | None):
  """Jitted `run(params, keys_a, keys_b, x_gt, eta, text, mask, cond=None) -> (a, b)` for one
  batch; `cond`, an image-to-video model's `conditioning.Condition`, is shared by a and b."""
  kw = dict(num_steps=spec.num_steps, shift=spec.shift or None, cfg_scale=spec.cfg_scale)

  @jax.jit
  def run(params, keys_a, keys_b, x_gt, eta, text, mask, cond=None):
    velocity_fn = conditioning.conditioned(sampling.velocity_fn(model, params), cond)
    if mode == "vanilla":
      a, b = flow.vanilla_pairs(velocity_fn, keys_a, keys_b, x_gt.shape[1:], text, mask, **kw)
    else:
      a, b = flow.guided_pairs(velocity_fn, x_gt, keys_a, keys_b,
                               fixed_eta if fixed_eta is not None else eta, text, mask, **kw)
    return conditioning.finish(cond, a), conditioning.finish(cond, b)
  return run


def _pair_record(video: schema.VideoRecord, a, b, mode, eta, seeds, spec) -> schema.PairRecord:
  return schema.PairRecord(
      id=f"{video.id}-{mode}", prompt=video.prompt, text_emb=video.text_emb,
      text_mask=video.text_mask, latent_a=np.asarray(a, np.float32),
      latent_b=np.asarray(b, np.float32), num_frames=video.num_frames, fps=video.fps,
      frames_per_segment=spec.frames_per_segment, source=mode,
      eta=eta if mode == "guided" else math.nan, seed_a=seeds[0], seed_b=seeds[1],
      temporal_factor=video.temporal_factor, causal=video.causal,
      gt_video_id=video.id if mode == "guided" else None, latent_dtype=spec.latent_dtype,
      metadata={"gt_metadata": dict(video.metadata)}, cond_latent=video.cond_latent,
      image_emb=video.image_emb,
      # The ground truth itself, for a flow-matching term on it (dpo.gt_lambda).
      gt_latent=(np.asarray(video.latent, np.float32)
                 if mode == "guided" and spec.get("store_gt", False) else None))


def generate_pairs(config: ml_collections.ConfigDict, source, params, model) -> dict:
  """Writes `config.pairs.num_pairs` pairs from the first videos of `source`; returns the sidecar.

  Args:
    config: the job config (`config.pairs`, `config.seed`).
    source: random-access source of video `RawRecord`s (ShardedSource, TfdsSource).
    params: exported model params (no LoRA), on the devices.
    model: the plain model (`model.build`) those params belong to.
  """
  spec = config.pairs
  if spec.mode not in MODES:
    raise ValueError(f"config.pairs.mode={spec.mode!r}; expected one of {MODES}")
  if spec.mode == "guided":
    check_eta_range(spec.eta_range)
  arrayrecord_io.check_local(spec.out_dir)  # Before any sampling.
  num_pairs = min(spec.num_pairs, len(source))
  if num_pairs < spec.num_pairs:
    logging.warning("config.pairs.num_pairs=%d, but the source has %d videos (one pair a video): "
                    "making %d pairs", spec.num_pairs, len(source), num_pairs)
  if num_pairs < 1:
    raise ValueError(f"config.pairs.num_pairs={spec.num_pairs} with {len(source)} source videos")
  out_dir, name = spec.out_dir, spec.name
  if distributed.path(arrayrecord_io.sidecar_path(out_dir, name)).exists():
    side = arrayrecord_io.read_sidecar(out_dir, name)
    mode = (side.get("metadata") or {}).get("mode")
    if side["num_records"] != num_pairs or mode != spec.mode:
      raise ValueError(f"pairs {out_dir}/{name} exist with {side['num_records']} {mode} pairs; "
                       f"this run wants {num_pairs} {spec.mode} pairs. Delete that folder or "
                       "set config.pairs.out_dir to another one.")
    logging.info("Pairs %s/%s already complete: skipping generation.", out_dir, name)
    return side
  fixed_eta = float(spec.eta_range[0]) if spec.eta_range[0] == spec.eta_range[1] else None
  run = make_pair_sampler(model, spec, spec.mode, fixed_eta)
  batch = spec.batch_size
  # The batch is split over as many local devices as divide it.
  devices = jax.local_devices()[:math.gcd(batch, jax.local_device_count())]
  mesh = Mesh(np.asarray(devices), ("data",))
  split = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, NamedSharding(mesh, P()))  # Replicated over those devices.

  metadata = {"mode": spec.mode, "eta_range": list(spec.eta_range), "num_steps": spec.num_steps,
              "init_from": config.init_from}
  plan = dict(metadata, num_pairs=num_pairs, pairs_per_part=spec.pairs_per_part,
              seed=config.seed, shift=spec.shift, cfg_scale=spec.cfg_scale)
  parts = Parts(os.path.join(out_dir, "parts"), num_pairs, spec.pairs_per_part, plan=plan,
                split_over_processes=True)
  start, done = time.time(), 0
  for k in parts.todo():  # Parts committed by an earlier run are skipped.
    indices = list(parts.items(k))
    with parts.writer(k) as writer:
      for i in range(0, len(indices), batch):
        chunk = indices[i:i + batch]
        videos = [arrayrecord_io.decode_raw(source[j]) for j in chunk]
        pad = batch - len(chunk)  # Static shapes: pad the last batch by repeating its last video.
        videos_in = videos + [videos[-1]] * pad
        seeds = [pair_seeds(config.seed, j) for j in chunk] + [(0, 1)] * pad
        etas = [draw_eta(config.seed, j, spec.eta_range) for j in chunk] + [0.5] * pad
        put = lambda x: jax.device_put(np.stack(x), split)
        keys_a = jax.device_put(jnp.stack([jax.random.key(s[0]) for s in seeds]), split)
        keys_b = jax.device_put(jnp.stack([jax.random.key(s[1]) for s in seeds]), split)
        cond = conditioning.from_records(videos_in, model.cfg)  # Image-to-video: frame 0.
        cond = None if cond is None else jax.tree_util.tree_map(lambda a: put(list(a)), cond)
        a, b = run(params, keys_a, keys_b, put([v.latent.astype(np.float32) for v in videos_in]),
                   put(np.asarray(etas, np.float32)), put([v.text_emb for v in videos_in]),
                   put([np.asarray(v.text_mask, bool) for v in videos_in]), cond)
        a, b = np.asarray(a), np.asarray(b)
        for n, (video, j) in enumerate(zip(videos, chunk)):
          writer.write(_pair_record(video, a[n], b[n], spec.mode, etas[n], seeds[n], spec))
        done += len(chunk)
        rate = done / (time.time() - start)
        logging.info("pairs: part %d/%d, %d pairs this run, %.1f pairs/s", k + 1,
                     parts.num_parts, done, rate)
  return parts.merge(out_dir, name, metadata)


def main(config: ml_collections.ConfigDict) -> dict:
  """task=pairs: load the model from `config.init_from`, generate, report."""
  if not config.init_from:
    raise ValueError("config.init_from is empty: pair generation needs a trained model")
  cfg = model_config(config).replace(lora=LoRAConfig())
  model = build(cfg)
  source = make_source(config.data)
  params = sampling.load_exported_params(config.init_from, cfg)
  side = generate_pairs(config, source, params, model)
  if distributed.is_main():
    logging.info("Pairs: %d records in %s/%s", side["num_records"], config.pairs.out_dir,
                 config.pairs.name)
    if config.decoder.kind != "none":  # Video files for people and VLMs to label.
      from densedpo_jax.interop import decode_records  # Only when asked: it may load PyTorch.
      d = config.decoder
      videos_dir = os.path.join(config.pairs.out_dir, f"{config.pairs.name}_videos")
      decode_records.decode_dataset(config.pairs.out_dir, config.pairs.name, videos_dir, d.kind,
                                    d.weights, d.format, d.scale)
  distributed.barrier("pairs: decoded")
  return side

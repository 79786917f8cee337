"""The one train loop for pretraining, SFT, Vanilla/Structural DPO and DenseDPO.

Reads top to bottom: mesh, data, model and optimiser, shardings, step, checkpoint, loop.
A run restarted in the same workdir continues from its last checkpoint (state and data
iterator), reproducing the losses of an uninterrupted run. SIGTERM saves and exits cleanly; on
several processes (one signalled or all) every process saves the same step and stops.
"""
from __future__ import annotations

import math
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from densedpo_jax import console, distributed, previews
from densedpo_jax.training import checkpointing, sharding, train_step
from densedpo_jax.objectives import sampling
from densedpo_jax.training.builders import make_source, model_config, training_weights
from densedpo_jax.data import arrayrecord_io, pipeline
from densedpo_jax.model import build, conditioning, experts, merge_lora, pretrained


class NonFiniteLossError(console.JobError, FloatingPointError):
  pass


def make_dataset(config: ml_collections.ConfigDict, source):
  """Per-process batches of `source`: a Grain IterDataset (`iter()` gives a checkpointable
  iterator)."""
  data = config.data
  if data.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={data.batch_size} is not divisible by "
                     f"{jax.process_count()} processes")
  common = dict(batch_size=data.batch_size // jax.process_count(), seed=config.seed,
                read_threads=data.read_threads, prefetch_buffer_size=data.prefetch)
  if config.loss == "flow_matching":
    return pipeline.video_dataset(source, **common)
  mode = "dense" if config.loss == "dense_dpo" else "global"
  return pipeline.pair_dataset(source, mode=mode, min_nontie_frac=data.min_nontie_frac, **common)


def _sample_inputs(batch: dict[str, Any], cfg):
  """Model inputs of one video, shaped like the batch (for init and eval_shape); the model's
  own input channels (an image-to-video model takes more than the latent has)."""
  latent = batch["latent"] if "latent" in batch else batch["latent_a"]
  return (jnp.zeros((1,) + latent.shape[1:-1] + (cfg.in_channels,), jnp.float32),
          jnp.zeros((1,), jnp.float32),
          jnp.zeros((1,) + batch["text_emb"].shape[1:], jnp.float32),
          jnp.ones((1,) + batch["text_mask"].shape[1:], bool))


def preview_prompts(source, n: int, cfg):
  """`(text_emb [n, L, D], text_mask [n, L], condition or None)` of the first `n` readable
  records of `source`: the same preview prompts (and, for an image-to-video model of `cfg`, first
  frames) on every process (each process reads another share of the data)."""
  recs = []
  for i in range(len(source)):
    rec = arrayrecord_io.decode_raw(source[i])
    if rec is not None:
      recs.append(rec)
    if len(recs) == n:
      break
  stack = lambda field, dtype: np.stack([np.asarray(getattr(r, field), dtype) for r in recs])
  return stack("text_emb", np.float32), stack("text_mask", bool), conditioning.from_records(recs, cfg)


def make_sampler(cfg, batch: dict[str, Any], source, sample: ml_collections.ConfigDict):
  """`run(params) -> videos [N, T, H, W, C]`: the first N prompts of `source`, fixed noise, at
  the latent shape of `batch`.

  `params` are exported ones (LoRA folded in), so the sampler runs the plain model.
  """
  text, mask, cond = preview_prompts(source, sample.num_videos, cfg)
  latent = batch["latent"] if "latent" in batch else batch["latent_a"]
  keys = jax.random.split(jax.random.key(sample.seed), len(text))
  run = sampling.make_video_sampler(cfg, latent.shape[1:], sample.num_steps, sample.cfg_scale)
  return lambda params: run(params, keys, text, mask, cond)


def write_samples(writer, workdir: str, step: int, videos: np.ndarray, fps: float) -> None:
  """Samples to TensorBoard (one strip a video) and to `<workdir>/samples/` as PNG and GIF."""
  image = previews.grid(videos)
  writer.write_images(step, {"samples": image[None]})
  if distributed.is_main():
    base = distributed.path(workdir) / "samples" / f"step_{step:07d}"
    previews.save_png(f"{base}.png", image)
    previews.save_gif(f"{base}.gif", videos, fps=fps)


def _install_sigterm_flag() -> dict[str, bool]:
  flag = {"stop": False}
  def handler(signum, frame):
    logging.warning("Signal %d received: saving a checkpoint and stopping.", signum)
    flag["stop"] = True
  try:
    signal.signal(signal.SIGTERM, handler)
  except ValueError:  # Not the main thread (e.g. under a test runner thread): no handler.
    pass
  return flag


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict[str, float]]:
  """Trains up to `config.total_steps` steps in `workdir`; returns `{step: metrics}` as logged."""
  pipeline_root, expert = config.get("init_from"), config.get("expert", "")
  config = training_weights(config)  # A pipeline folder -> its (expert's) transformer folder.
  distributed.makedirs(workdir)
  if expert and distributed.is_main():  # Which expert this run adapts: for export and evaluate.
    distributed.write_json(distributed.path(workdir) / experts.RUN_EXPERT_JSON, experts.run_record(
        pipeline_root, expert, tuple(config.t_sampler.range)))
  checkpointing.check_resumable(workdir)  # Before anything is compiled.
  stop = _install_sigterm_flag()
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  # Mesh.
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = sharding.create_mesh(config.mesh.shape, config.mesh.dcn_shape or None, devices)
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.mesh.rules)
  logging.info("Mesh %s over %d devices", dict(mesh.shape), mesh.size)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  accum = config.optim.accum_steps
  if config.data.batch_size % (batch_devices * accum):
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by the "
                     f"{batch_devices} devices of the batch axes ('data', 'fsdp') of mesh "
                     f"{dict(mesh.shape)} x config.optim.accum_steps={accum}: change the batch "
                     "size, the mesh or the accumulation")

  # Data.
  source = make_source(config.data)
  if len(source) < config.data.batch_size:
    logging.warning("config.data.batch_size=%d is larger than the dataset (%d records): every "
                    "batch repeats records", config.data.batch_size, len(source))
  dataset = make_dataset(config, source)
  data_iter = iter(dataset)
  first_batch = next(iter(dataset))  # A fresh iterator: only for shapes.

  # Model and optimiser.
  cfg = model_config(config)
  pipeline = experts.read_pipeline(pipeline_root) if expert == experts.BOTH else None
  # Both experts of an A14B pipeline: one module whose variables nest per expert.
  model = build(cfg) if pipeline is None else experts.TwoExperts(cfg, pipeline.boundary_ratio)
  if distributed.is_main():  # What `load_pretrained(workdir)` reads beside the exported params.
    distributed.write_json(distributed.path(workdir) / pretrained.MODEL_JSON,
                           pretrained.config_to_dict(cfg))
  tx = train_step.make_optimizer(config.optim)
  lora_trained = config.loss != "flow_matching" or cfg.lora.rank > 0
  if lora_trained and cfg.lora.rank == 0:
    raise ValueError(f"config.loss={config.loss!r} trains a LoRA adapter: set config.lora.rank > 0")
  if pipeline is not None and not lora_trained:
    raise ValueError("config.expert='both' adapts a LoRA on each expert: set config.lora.rank > 0")
  inputs = _sample_inputs(first_batch, cfg)
  init_vars = lambda key: model.init(key, *inputs)

  def init_state(key):
    variables = init_vars(key)
    trainable = variables["lora"] if lora_trained else variables["params"]
    return train_step.init_state(trainable, tx, use_ema=config.ema_decay > 0)

  # Shardings.
  rng = jax.random.key(config.seed)
  abstract_vars = jax.eval_shape(init_vars, rng)
  abstract_state = jax.eval_shape(init_state, rng)
  state_shardings = sharding.logical_shardings(abstract_state, mesh, rules)
  params_shardings = sharding.logical_shardings(abstract_vars["params"], mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh)
  abstract_params = checkpointing.abstract_like(nn.unbox(abstract_vars["params"]), params_shardings)
  state = jax.jit(lambda k: nn.unbox(init_state(k)), out_shardings=state_shardings)(rng)
  if lora_trained:
    if pipeline is not None:  # Each expert's base from its own folder.
      frozen = {name: pretrained.read_params(folder, abstract_params[name], cfg)
                for name, folder in pipeline.transformers.items()}
      logging.info("Base weights from %s", ", ".join(pipeline.transformers.values()))
    elif config.init_from:
      frozen = pretrained.read_params(config.init_from, abstract_params, cfg)
      logging.info("Base weights from %s", config.init_from)
    else:
      logging.warning("config.init_from is empty: %s starts from a random base model.", config.loss)
      frozen = jax.jit(lambda k: nn.unbox(init_vars(k)["params"]), out_shardings=params_shardings)(rng)
  else:
    frozen = {}
  frozen_shardings = params_shardings if lora_trained else {}

  # Step.
  micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
  step_fn = jax.jit(train_step.make_train_step(model, config, tx, batch_devices, micro_sharding),
                    in_shardings=(state_shardings, frozen_shardings, batch_sharding, None),
                    out_shardings=(state_shardings, None), donate_argnums=(0,))

  def export_params(state):
    """What sampling and `init_from` read: EMA/raw params, or the base with LoRA folded in."""
    if not lora_trained:
      return state.ema if state.ema is not None else state.trainable
    return merge_lora(frozen, state.ema if state.ema is not None else state.trainable, cfg)

  export = jax.jit(export_params, out_shardings=params_shardings)
  sampler = make_sampler(cfg, first_batch, source, config.sample) if config.sample.every else None
  if sampler is not None and pipeline is not None:  # Previews sample with both adapted experts.
    sample_pair = sampler
    sampler = lambda p: sample_pair(experts.ExpertParams(p["high"], p["low"],
                                                         pipeline.boundary_ratio))
  elif sampler is not None and expert:
    logging.warning("config.sample.every=%d: no previews while adapting one expert (it alone would "
                    "sample every level); sample the pair with task=evaluate and HIGH_RUN+LOW_RUN",
                    config.sample.every)
    sampler = None

  # Checkpoint.
  ckpt = checkpointing.RunCheckpointer(workdir, keep=config.keep_checkpoints,
                                       async_save=config.async_checkpointing)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, checkpointing.abstract_like(nn.unbox(abstract_state),
                                                            state_shardings), data_iter)
    logging.info("Resumed from %s at step %d", ckpt.directory, start)
  elif config.init_from and not lora_trained:  # Continue pretraining from exported weights.
    params = pretrained.read_params(config.init_from, abstract_params, cfg)
    ema = jax.tree_util.tree_map(jnp.copy, params) if state.ema is not None else None
    state = state.replace(trainable=params, ema=ema)
    logging.info("Weights (fresh optimiser) from %s", config.init_from)
  start = int(state.step)

  # Loop.
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every)]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  key = jax.random.key(config.seed + 1)
  # Metric windows partition the steps: each closes at a multiple of log_every, at a save and at
  # the stop, so every step is logged exactly once across restarts (`window_steps` = its length).
  unchecked, summary, window, history = None, None, 0, {}
  step = start
  # The loop stops only at a save decision that saved: a signal is acted on at the next decision
  # (on several processes, by a vote one step late), so every process saves the same step.
  vote, stopping = distributed.StopVote(mesh), False
  if start:
    logging.info("Resumed at step %d; the next metric window starts at step %d", start, start + 1)
  failed = True  # Until the loop ends cleanly: a failing close must not hide the first error.
  try:
    # The mesh and the logical rules, bound while the step is traced: the model's activation
    # constraints (model/layers.py) take effect (jax.set_mesh; a plain `with mesh:` leaves them
    # inert in flax).
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < config.total_steps and not stopping:
        batch = sharding.shard_batch(next(data_iter), mesh)
        state, metrics = step_fn(state, frozen, batch, key)
        step += 1
        for hook in hooks:
          hook(step)
        summary = metrics if summary is None else summary.merge(metrics)
        window += 1
        if unchecked is not None:  # Checked one step late, so the host does not stall the devices.
          _check_finite(*unchecked)
        unchecked = (step, metrics)
        last = step == config.total_steps
        if sampler is not None and (step % config.sample.every == 0 or last):
          videos = np.asarray(multihost_utils.process_allgather(sampler(export(state)), tiled=True))
          write_samples(writer, workdir, step, videos, config.sample.fps)
        # Decided after sampling, so a signal that arrives while it runs still saves this step.
        stopping = vote.poll(stop["stop"])
        save = step % config.checkpoint_every == 0 or last or stopping
        log = step % config.log_every == 0 or save
        if log:  # Nothing non-finite is logged as good or saved.
          _check_finite(*unchecked)
          unchecked = None
          history[step] = dict({k: float(v) for k, v in summary.compute().items()},
                               window_steps=window)
          if getattr(source, "unreadable", None):  # Skipped (config.data.max_unreadable_share).
            history[step]["unreadable_records"] = len(source.unreadable)
          writer.write_scalars(step, history[step])
          summary, window = None, 0
        if save:
          ckpt.save(step, state, data_iter, export(state), force=True)
    failed = False
  finally:  # Every exit (a NaN, a data error, Ctrl-C) finishes the saves already started.
    try:
      ckpt.close()
    except checkpointing.CheckpointWriteError:
      if not failed:
        raise
      logging.info("finishing the checkpoint in flight after the error also failed",
                   exc_info=True, extra={console.FILE_ONLY: True})
    writer.flush()
  if stopping:
    logging.warning("Stopped by a signal at step %d of %d; checkpoint %d saved.", step,
                    config.total_steps, step)
  return history


def _check_finite(step: int, metrics) -> None:
  loss = float(metrics.compute()["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"Loss is {loss} at step {step}; stopping. The last good checkpoint "
                             "is kept; lower the learning rate or check the data.")

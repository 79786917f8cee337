"""Train state, optimiser, and the jitted train step for every job.

`config.loss` picks the objective:
  flow_matching   pretraining (trains `'params'`) or SFT (trains `'lora'` when lora.rank > 0)
  flow_dpo        Vanilla / Structural DPO (one label a pair; they differ only in their pairs)
  dense_dpo       DenseDPO (latent-frame labels from segment labels)
The trainable tree is `state.trainable`; the frozen base is a separate, non-differentiated
argument, so the optimiser never holds state for it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from densedpo_jax.model import conditioning
from densedpo_jax.objectives import dpo, flow, losses

LOSSES = ("flow_matching", "flow_dpo", "dense_dpo")
DPO_METRICS = ("loss", "implicit_acc", "reward_margin", "policy_err_win", "policy_err_lose",
               "ref_err_win", "ref_err_lose", "nontie_frac", "winner_worse_frac")
STEP_METRICS = ("grad_norm", "learning_rate")


@flax.struct.dataclass
class TrainState:
  """`trainable`: `'params'` (pretraining) or `'lora'` (SFT, DPO); `ema`: its EMA or None."""
  step: jax.Array
  trainable: Any
  opt_state: Any
  ema: Any = None


def metric_names(loss: str, gt_term: bool = False) -> tuple[str, ...]:
  """What the step logs (`gt_term`: the flow-matching term on the ground truth, dpo.gt_lambda)."""
  dpo = DPO_METRICS + (("gt_flow_loss",) if gt_term else ())
  return (("loss",) if loss == "flow_matching" else dpo) + STEP_METRICS


def metrics_collection(loss: str, gt_term: bool = False) -> type[clu_metrics.Collection]:
  """A clu Collection averaging every scalar the step reports."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in metric_names(loss, gt_term)})


def learning_rate_schedule(optim) -> optax.Schedule:
  """Linear warm-up from `init_lr` to `lr` over `warmup_steps`, then constant (paper A.2)."""
  return optax.join_schedules(
      [optax.linear_schedule(optim.init_lr, optim.lr, max(optim.warmup_steps, 1)),
       optax.constant_schedule(optim.lr)], [optim.warmup_steps])


def make_optimizer(optim) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (`grad_clip <= 0` disables it)."""
  parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  parts.append(optax.adamw(learning_rate_schedule(optim), b1=optim.b1, b2=optim.b2,
                           weight_decay=optim.weight_decay))
  return optax.chain(*parts)


def ema_decay(step: jax.Array, max_decay: float) -> jax.Array:
  """Warmed-up EMA decay `min(max_decay, (1 + n) / (10 + n))` (docs/shapesworld.md: the
  shipped base model's recipe)."""
  n = step.astype(jnp.float32)
  return jnp.minimum(max_decay, (1.0 + n) / (10.0 + n))


def _t_sampler(config) -> Callable:
  spec = config.t_sampler
  if spec.get("boundary", 0.0):  # Both experts of a two-expert model in one run.
    return functools.partial(flow.sample_t_two_experts, boundary=spec.boundary,
                             high_share=spec.get("high_share", 0.5), kind=spec.kind,
                             mean=spec.mean, std=spec.std)
  return functools.partial(flow.sample_t, kind=spec.kind, mean=spec.mean, std=spec.std,
                           t_range=tuple(spec.get("range", (0.0, 1.0))))


def to_compute_floats(batch: dict[str, Any]) -> dict[str, Any]:
  """bf16 / f16 arrays of a batch (the stored dtypes the host sends) -> float32, on device."""
  low = (jnp.bfloat16, jnp.float16)
  return {k: v.astype(jnp.float32) if v.dtype in low else v for k, v in batch.items()}


def draw_batch_noise(config, batch: dict[str, Any], key: jax.Array) -> dict[str, Any]:
  """The step's noise for the whole batch (t, eps), drawn before any split into micro-batches,
  so that an accumulated step sees exactly the noise of the unsplit one."""
  t_sampler = _t_sampler(config)
  if config.loss == "flow_matching":
    key_t, key_eps, _ = jax.random.split(key, 3)
    x0 = batch["latent"]
    return {"t": t_sampler(key_t, (x0.shape[0],)),
            "eps": jax.random.normal(key_eps, x0.shape, jnp.float32)}
  return dpo.draw_noise(batch, key, share_noise=config.dpo.share_noise, t_sampler=t_sampler)


def make_loss_fn(model, config) -> Callable:
  """`loss_fn(trainable, frozen, batch, key) -> (loss, (metrics, weight))` for `config.loss`.

  `batch` carries its noise (`draw_batch_noise`); `weight` is the loss's normaliser (videos, or
  pairs with a non-tie label), by which an accumulated step weights its micro-batches.
  """
  lora_trained = config.loss != "flow_matching" or config.lora.rank > 0
  t_sampler = _t_sampler(config)

  def variables(trainable, frozen):
    return {"params": frozen, "lora": trainable} if lora_trained else {"params": trainable}

  def cond_kind(batch):  # The model's image-to-video conditioning, from static shapes.
    cond = batch.get("cond_latent")
    return conditioning.kind_of(model.cfg, None if cond is None else cond.shape[1])

  def flow_matching(trainable, frozen, batch, key):
    x0, t, eps = batch["latent"], batch["t"], batch["eps"]
    key_drop = jax.random.split(key, 3)[2]
    cond = conditioning.from_batch(batch, cond_kind(batch))
    x_t = flow.add_noise(x0, eps, t)
    x_in, t_in, extra = (x_t, t, {}) if cond is None else conditioning.model_inputs(cond, x_t, t)
    v = model.apply(variables(trainable, frozen), x_in, t_in, batch["text_emb"],
                    batch["text_mask"], train=True, rngs={"dropout": key_drop}, **extra)
    frames = conditioning.trained_frames(cond)
    loss, metrics = losses.flow_matching_loss(v[:, frames], flow.velocity_target(x0, eps)[:, frames])
    return loss, (metrics, jnp.float32(x0.shape[0]))

  gt_lambda = config.dpo.get("gt_lambda", 0.0) if config.loss != "flow_matching" else 0.0

  def dpo_objective(trainable, frozen, batch, key):
    dense = config.loss == "dense_dpo"
    batch = dict(batch)
    if not dense:
      batch["labels"] = batch["global_label"]
    loss, metrics = dpo.dpo_loss(model.apply, frozen, trainable, batch, key, beta=config.dpo.beta,
                                 dense=dense, granularity=config.dpo.granularity,
                                 share_noise=config.dpo.share_noise, t_sampler=t_sampler,
                                 cond_kind=cond_kind(batch),
                                 positive_lambda=config.dpo.get("positive_lambda", 0.0),
                                 pair_reduction=config.dpo.get("pair_reduction", "mean"),
                                 gt_lambda=gt_lambda,
                                 winner_lambda=config.dpo.get("winner_lambda", 0.0))
    names = DPO_METRICS + (("gt_flow_loss",) if gt_lambda > 0 else ())
    return loss, ({k: metrics[k] for k in names}, metrics["num_pairs"])

  if config.loss not in LOSSES:
    raise ValueError(f"config.loss={config.loss!r}; expected one of {LOSSES}")
  return flow_matching if config.loss == "flow_matching" else dpo_objective


def split_micro_batches(x: jax.Array, accum_steps: int, shards: int = 1,
                        sharding: Any = None) -> jax.Array:
  """`[B, ...]` -> `[accum_steps, B / accum_steps, ...]`, keeping each micro-batch's rows on the
  devices that hold them: the batch is `shards` contiguous blocks (one per batch-axis device), and
  micro-batch m takes the m-th slice of every block. `sharding` (e.g. `P(None, batch_axes)`)
  pins that layout, so no micro-batch is gathered onto every device."""
  b = x.shape[0]
  per = b // (shards * accum_steps)
  if b != per * shards * accum_steps:
    raise ValueError(f"batch {b} is not divisible by {shards} batch shards x {accum_steps} "
                     "accumulation steps")
  y = x.reshape((shards, accum_steps, per) + x.shape[1:]).swapaxes(0, 1)
  y = y.reshape((accum_steps, shards * per) + x.shape[1:])
  return y if sharding is None else jax.lax.with_sharding_constraint(y, sharding)


def _accumulated_grads(loss_fn, trainable, frozen, batch, key, accum_steps: int, shards: int = 1,
                       micro_sharding: Any = None):
  """Loss-weighted metrics and gradients over `accum_steps` micro-batches (a `lax.scan`).

  `loss_fn -> (loss, (metrics, weight))`. Micro-batch losses are means over their own `weight`
  units (videos, or non-tie pairs), so they are combined as `sum(weight_m * x_m) / sum(weight_m)`:
  with the batch's noise drawn before the split, loss and gradients equal the full batch's.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (_, (metrics, _)), grads = grad_fn(trainable, frozen, batch, key)
    return metrics, grads
  micro = {k: split_micro_batches(v, accum_steps, shards, micro_sharding) for k, v in batch.items()}

  def body(carry, inputs):
    grads_sum, metrics_sum, weight_sum = carry
    micro_batch, i = inputs
    (_, (metrics, weight)), grads = grad_fn(trainable, frozen, micro_batch,
                                            jax.random.fold_in(key, i))
    add = lambda a, b: jax.tree_util.tree_map(lambda x, y: x + weight * y, a, b)
    return (add(grads_sum, grads), add(metrics_sum, metrics), weight_sum + weight), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
  metrics0 = jax.eval_shape(lambda: grad_fn(trainable, frozen, jax.tree_util.tree_map(
      lambda x: x[0], micro), key)[0][1][0])
  metrics0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metrics0)
  (grads, metrics, weight), _ = jax.lax.scan(body, (zeros, metrics0, jnp.float32(0)),
                                             (micro, jnp.arange(accum_steps)))
  scale = lambda tree: jax.tree_util.tree_map(lambda x: x / jnp.maximum(weight, 1.0), tree)
  return scale(metrics), scale(grads)


def make_train_step(model, config, tx: optax.GradientTransformation, batch_shards: int = 1,
                    micro_sharding: Any = None) -> Callable:
  """`step(state, frozen, batch, key) -> (state, metrics)`; jit it with shardings (train.py).

  `batch_shards` and `micro_sharding`: the batch's device blocks and the sharding that keeps
  accumulation micro-batches on them (`split_micro_batches`).
  """
  loss_fn = make_loss_fn(model, config)
  schedule = learning_rate_schedule(config.optim)
  collection = metrics_collection(config.loss, config.dpo.get("gt_lambda", 0.0) > 0)

  def step(state: TrainState, frozen, batch, key):
    key = jax.random.fold_in(key, state.step)
    batch = to_compute_floats(batch)
    if not getattr(model.cfg, "image_dim", 0):  # CLIP features only reach a model that reads them.
      batch.pop("image_emb", None)
    batch = dict(batch, **draw_batch_noise(config, batch, key))
    metrics, grads = _accumulated_grads(loss_fn, state.trainable, frozen, batch, key,
                                        config.optim.accum_steps, batch_shards, micro_sharding)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    ema = state.ema
    if ema is not None:
      decay = ema_decay(state.step, config.ema_decay)
      ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, trainable)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), learning_rate=schedule(state.step))
    new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state, ema=ema)
    return new_state, collection.single_from_model_output(**metrics)

  return step


def init_state(trainable: Any, tx: optax.GradientTransformation, use_ema: bool) -> TrainState:
  """A fresh state around `trainable` (boxed or plain arrays)."""
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=tx.init(trainable),
                    ema=jax.tree_util.tree_map(jnp.copy, trainable) if use_ema else None)

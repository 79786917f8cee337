"""The model work of one DPO step: policy and reference errors of a batch of preference pairs.

For B pairs (a, b), both members get the same `t` and (with `share_noise`, the Diffusion-DPO
convention) the same `eps`. Model calls per step: two, each on the 2B videos `[a; b]`:

  policy     apply_fn({'params', 'lora'}, ..., lora_enabled=True)     gradients flow
  reference  apply_fn(same variables, ..., lora_enabled=False)        under stop_gradient

The two cannot share one call: `lora_enabled` is a static Python bool of the model, so a 4B batch
with LoRA on for half of it is not expressible. The reference reuses the policy's base weights (no
second copy); its variables and output are wrapped in `stop_gradient`, so it costs a forward pass
only.
"""
import jax
import jax.numpy as jnp
import numpy as np

from densedpo_jax.model import conditioning
from densedpo_jax.objectives import flow, losses

_BATCH_KEYS = ("latent_a", "latent_b", "text_emb", "text_mask")


def _check_batch(batch):
  missing = [k for k in _BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"batch is missing {missing}; expected keys {list(_BATCH_KEYS)}")
  shape = np.shape(batch["latent_a"])
  if len(shape) != 5:
    raise ValueError(f"batch['latent_a'] must be [B, T, H, W, C], got {shape}")
  if np.shape(batch["latent_b"]) != shape:
    raise ValueError(f"batch['latent_b'] must have the shape of latent_a {shape}, "
                     f"got {np.shape(batch['latent_b'])}")
  text, mask = np.shape(batch["text_emb"]), np.shape(batch["text_mask"])
  if len(text) != 3 or text[0] != shape[0]:
    raise ValueError(f"batch['text_emb'] must be [B={shape[0]}, L, D], got {text}")
  if mask != text[:2]:
    raise ValueError(f"batch['text_mask'] must be [B, L] = {text[:2]}, got {mask}")


def draw_noise(batch, key, *, share_noise=True, t_sampler=flow.logit_normal_t):
  """`{'t' [B], 'eps_a', 'eps_b'}` of a batch of pairs: what `dpo_errors` draws from `key`.

  Drawn once for a whole batch, they make a step split into micro-batches see exactly the noise
  of the unsplit step.
  """
  shape = np.shape(batch["latent_a"])
  key_t, key_a, key_b = jax.random.split(key, 3)
  eps_a = jax.random.normal(key_a, shape, jnp.float32)
  eps_b = eps_a if share_noise else jax.random.normal(key_b, shape, jnp.float32)
  return {"t": t_sampler(key_t, (shape[0],)), "eps_a": eps_a, "eps_b": eps_b}


def dpo_errors(apply_fn, params, lora, batch, key, *, share_noise=True,
               t_sampler=flow.logit_normal_t, cond_kind=None, with_gt=False):
  """Per-frame flow-matching errors of policy and reference on both pair members.

  Args:
    apply_fn: `(variables, x, t, text, text_mask, lora_enabled=...) -> v`, like
      `VideoDiT(cfg).apply`; `variables = {'params': params, 'lora': lora}`.
    params: base weights; lora: adapter weights (the policy is base + LoRA).
    batch: dict with `latent_a, latent_b [B, T, H, W, C]`, `text_emb [B, L, D]`,
      `text_mask [B, L]` bool, and optionally the noise of `draw_noise` (then `key` is unused).
    key: PRNG key for `t` and `eps`.
    share_noise: the same `eps` for a and b (else independent noises). `t` is always shared.
    t_sampler: `(key, shape) -> t` in [0, 1], e.g. `flow.logit_normal_t` or `flow.uniform_t`.
    cond_kind: the image-to-video conditioning of the model (`conditioning.kind_of`), taken from
      the batch's `cond_latent` (and `image_emb`), which both members share; None for
      text-to-video.
    with_gt: the policy also runs on the batch's `gt_latent [B, T, H, W, C]` (the ground truth
      of guided pairs) at the same `t` and member a's noise, in the same call.
  Returns:
    dict of `err_theta_a, err_ref_a, err_theta_b, err_ref_b`, each `[B, T]` over the frames that
    carry loss (`T` latent frames; TI2V's conditioning frame 0 is left out); with `with_gt`, also
    `err_theta_gt [B, T]`.
  """
  _check_batch(batch)
  x0_a, x0_b = batch["latent_a"].astype(jnp.float32), batch["latent_b"].astype(jnp.float32)
  b = x0_a.shape[0]
  noise = batch if "t" in batch else draw_noise(batch, key, share_noise=share_noise,
                                                t_sampler=t_sampler)
  t, eps_a, eps_b = noise["t"], noise["eps_a"], noise["eps_b"]

  if with_gt and "gt_latent" not in batch:
    raise ValueError("dpo.gt_lambda > 0 needs each pair's ground truth: the batch has no "
                     "'gt_latent' (generate guided pairs with config.pairs.store_gt=True)")
  copies = 3 if with_gt else 2  # The policy's videos: [a; b] or [a; b; gt].
  repeat = lambda a, n: jnp.concatenate([a] * n, axis=0)
  members = [x0_a, x0_b] + ([batch["gt_latent"].astype(jnp.float32)] if with_gt else [])
  x0 = jnp.concatenate(members, axis=0)
  eps = jnp.concatenate([eps_a, eps_b] + ([eps_a] if with_gt else []), axis=0)
  tn = repeat(t, copies)
  x_t = flow.add_noise(x0, eps, tn)
  v_target = flow.velocity_target(x0, eps)
  text, text_mask = repeat(batch["text_emb"], copies), repeat(batch["text_mask"], copies)
  cond = conditioning.from_batch(batch, cond_kind)
  x_in, t_in, extra = ((x_t, tn, {}) if cond is None
                       else conditioning.model_inputs(cond.repeat(copies), x_t, tn))
  first = lambda tree, n: jax.tree_util.tree_map(lambda a: a[:n], tree)  # The reference's [a; b].
  call = lambda variables, lora_enabled, n: apply_fn(
      variables, x_in[:n], t_in[:n], text[:n], text_mask[:n], lora_enabled=lora_enabled,
      **first(extra, n))

  variables = {"params": params, "lora": lora}
  v_theta = call(variables, True, copies * b)
  v_ref = jax.lax.stop_gradient(call(jax.lax.stop_gradient(variables), False, 2 * b))

  frames = conditioning.trained_frames(cond)
  err_theta = losses.per_frame_error(v_theta, v_target)[:, frames]
  err_ref = losses.per_frame_error(v_ref, v_target[:2 * b])[:, frames]
  out = {"err_theta_a": err_theta[:b], "err_ref_a": err_ref[:b],
         "err_theta_b": err_theta[b:2 * b], "err_ref_b": err_ref[b:]}
  if with_gt:
    out["err_theta_gt"] = err_theta[2 * b:]
  return out


def dpo_loss(apply_fn, params, lora, batch, key, *, beta, dense=True, granularity="frame",
             share_noise=True, t_sampler=flow.logit_normal_t, cond_kind=None,
             positive_lambda=0.0, pair_reduction="mean", gt_lambda=0.0, winner_lambda=0.0):
  """DPO loss of one step: `dpo_errors` then `dense_dpo_loss` or `flow_dpo_loss`.

  `batch` is as for `dpo_errors` plus `labels`: `[B, T]` latent-frame labels when `dense`, else
  `[B]` pair labels (errors averaged over T first); and `segment_ids [B, T]` for
  `granularity='segment'`. Returns `(loss, metrics)`; differentiate with respect to `lora`.
  With `cond_kind='first_frame'` (TI2V) latent frame 0 is the condition and carries no loss.
  `positive_lambda`, `pair_reduction` and `winner_lambda` are the objective's variants
  (`losses._dpo`);
  `gt_lambda > 0` adds `gt_lambda` times the policy's flow-matching error on the pairs' ground
  truth (`gt_latent`; the mean over its videos and frames), logged as `gt_flow_loss`.
  """
  if not gt_lambda >= 0:
    raise ValueError(f"gt_lambda={gt_lambda}; expected >= 0")
  errs = dpo_errors(apply_fn, params, lora, batch, key, share_noise=share_noise,
                    t_sampler=t_sampler, cond_kind=cond_kind, with_gt=gt_lambda > 0)
  gt_err = errs.pop("err_theta_gt", None)
  loss, metrics = _preference_loss(errs, batch, beta, dense, granularity,
                                   dict(positive_lambda=positive_lambda,
                                        pair_reduction=pair_reduction, winner_lambda=winner_lambda))
  if gt_err is None:
    return loss, metrics
  gt_loss = gt_err.mean()
  return loss + gt_lambda * gt_loss, dict(metrics, loss=loss + gt_lambda * gt_loss,
                                          gt_flow_loss=gt_loss)


def _preference_loss(errs, batch, beta, dense, granularity, variant):
  """`dense_dpo_loss` on frame labels, or `flow_dpo_loss` on pair labels, of `dpo_errors`."""
  if dense:
    frames = slice(batch["labels"].shape[-1] - errs["err_theta_a"].shape[-1], None)
    segment_ids = batch.get("segment_ids")
    return losses.dense_dpo_loss(**errs, labels=batch["labels"][:, frames], beta=beta,
                                 granularity=granularity,
                                 segment_ids=None if segment_ids is None else segment_ids[:, frames],
                                 **variant)
  errs = {k: v.mean(-1) for k, v in errs.items()}
  return losses.flow_dpo_loss(**errs, labels=batch["labels"], beta=beta,
                              positive_lambda=variant["positive_lambda"],
                              winner_lambda=variant["winner_lambda"])


__all__ = ["draw_noise", "dpo_errors", "dpo_loss"]

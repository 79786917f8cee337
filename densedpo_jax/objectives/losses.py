"""Flow-matching, Flow-DPO (Eq. 5) and dense segment DPO (Eq. 7) losses and their metrics.

Pure functions of arrays: no model in here. The DPO losses take the per-sample flow-matching errors
of the policy (`err_theta_*`) and of the reference (`err_ref_*`) on both pair members and

    z = -(beta / 2) * s * ((err_theta_a - err_ref_a) - (err_theta_b - err_ref_b))
    loss = -log sigmoid(z)

with `s = +1` when a is preferred, `-1` when b is, `0` for a tie (no loss).

Label checks. Shapes are checked at trace time (ValueError). When `labels` are concrete (eager
calls, or labels that are not traced), values outside {-1, 0, +1} and a batch where every label is
a tie raise ValueError. Under `jit` the values cannot be checked: any value other than +1 or -1
then counts as a tie, and an all-tie batch gives a loss of exactly 0 (and zero gradients) with
`nontie_frac == 0` and every other metric 0, so a trainer can skip or log it. The data pipeline
is where bad labels are rejected; the jit path only guarantees they never push a wrong gradient.

Metrics (scalars, pooled over the non-tie units - pairs, frames or segments - of the batch):
`loss`, `implicit_acc` (share of z > 0, z == 0 counting 1/2), `reward_margin` (mean z),
`policy_err_win`, `policy_err_lose`, `ref_err_win`, `ref_err_lose` (errors of the preferred and the
rejected member), `nontie_frac` (non-tie units over all units).
"""
import jax
import jax.numpy as jnp
import numpy as np

_ERR_NAMES = ("err_theta_a", "err_ref_a", "err_theta_b", "err_ref_b")


def _f32(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _concrete(x):
  """`x` as a NumPy array, or None when it is traced."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _check_shapes(errs, labels, ndim):
  shape = np.shape(errs[0])
  if len(shape) != ndim:
    raise ValueError(f"err_theta_a must have {ndim} dims ({'[B]' if ndim == 1 else '[B, T]'}), "
                     f"got shape {shape}")
  for name, e in zip(_ERR_NAMES, errs):
    if np.shape(e) != shape:
      raise ValueError(f"{name} must have the shape of err_theta_a {shape}, got {np.shape(e)}")
  if np.shape(labels) != shape:
    raise ValueError(f"labels must have the shape of the errors {shape}, got {np.shape(labels)}")


def _check_label_values(labels):
  values = _concrete(labels)
  if values is None:
    return
  bad = values[~np.isin(values, (-1, 0, 1))]
  if bad.size:
    raise ValueError(f"labels must be in {{-1, 0, +1}}, got values {np.unique(bad)[:8]}")
  if values.size and not np.any(values):
    raise ValueError("labels: every label is a tie (0), so the DPO loss is undefined; "
                     "filter all-tie pairs out of the data")


PAIR_REDUCTIONS = ("mean", "sum")


def _dpo(err_theta_a, err_ref_a, err_theta_b, err_ref_b, labels, valid, beta,
         positive_lambda=0.0, pair_reduction="mean", winner_lambda=0.0):
  """Loss and metrics from per-unit errors and labels `[B, U]`; `valid [B, U]` marks real units.

  A non-tie unit's loss is `-log sigmoid(z - (beta / 2) positive_lambda max(0, e_theta(w) -
  e_ref(w)))`: DPO-Positive (Pal et al. 2024) per unit, its penalty inside the sigmoid on the
  scale of z (in flow-matching terms the winner's log-ratio is `-(beta / 2)(e_theta(w) -
  e_ref(w))`), so the winner's error may not rise above the reference's; 0 turns it off.
  `reward_margin` and `implicit_acc` stay those of z. `winner_lambda` adds
  `winner_lambda * e_theta(w)` to every non-tie unit's loss: a flow-matching term on the
  preferred member, the negative log-likelihood term of RPO (Pang et al. 2024, "Iterative
  Reasoning Preference Optimization"); 0 turns it off. A pair's loss is the mean of its non-tie
  units' losses (`pair_reduction='mean'`) or their sum ('sum': pairs with more non-tie units
  weigh more); the batch loss is the mean over pairs with a non-tie unit.
  """
  if pair_reduction not in PAIR_REDUCTIONS:
    raise ValueError(f"pair_reduction={pair_reduction!r}; expected one of {PAIR_REDUCTIONS}")
  if not positive_lambda >= 0:
    raise ValueError(f"positive_lambda={positive_lambda}; expected >= 0")
  if not winner_lambda >= 0:
    raise ValueError(f"winner_lambda={winner_lambda}; expected >= 0")
  win_a = (labels == 1) & valid
  nontie = win_a | ((labels == -1) & valid)
  s = jnp.where(win_a, 1.0, -1.0)
  z = -(beta / 2) * s * ((err_theta_a - err_ref_a) - (err_theta_b - err_ref_b))
  win, lose = (lambda a, b: jnp.where(win_a, a, b)), (lambda a, b: jnp.where(win_a, b, a))
  positive = jax.nn.relu(win(err_theta_a, err_theta_b) - win(err_ref_a, err_ref_b))
  unit_loss = -jax.nn.log_sigmoid(z - (beta / 2) * positive_lambda * positive)
  if winner_lambda:
    unit_loss = unit_loss + winner_lambda * win(err_theta_a, err_theta_b)
  unit_loss = jnp.where(nontie, unit_loss, 0.0)

  n_pair = nontie.sum(-1)
  has_pair = n_pair > 0
  pair_loss = unit_loss.sum(-1) / (jnp.maximum(n_pair, 1) if pair_reduction == "mean" else 1)
  loss = jnp.where(has_pair, pair_loss, 0.0).sum() / jnp.maximum(has_pair.sum(), 1)

  n = jnp.maximum(nontie.sum(), 1)
  mean = lambda x: jnp.where(nontie, x, 0.0).sum() / n
  metrics = {
      "loss": loss,
      "implicit_acc": mean(jnp.where(z > 0, 1.0, jnp.where(z == 0, 0.5, 0.0))),
      "reward_margin": mean(z),
      "policy_err_win": mean(win(err_theta_a, err_theta_b)),
      "policy_err_lose": mean(lose(err_theta_a, err_theta_b)),
      "ref_err_win": mean(win(err_ref_a, err_ref_b)),
      "ref_err_lose": mean(lose(err_ref_a, err_ref_b)),
      "nontie_frac": nontie.sum() / jnp.maximum(valid.sum(), 1),
      # Non-tie units whose winner's error rose above the reference's (DPO-Positive's concern).
      "winner_worse_frac": mean((positive > 0).astype(jnp.float32)),
      # The loss's normaliser: an accumulated loss weights its micro-batches by it.
      "num_pairs": has_pair.sum().astype(jnp.float32),
  }
  return loss, metrics


def flow_matching_loss(v_pred, v_target, mask=None):
  """Mean squared velocity error.

  Args:
    v_pred, v_target: `[B, T, H, W, C]` (any shape, equal).
    mask: optional weights over leading dims of `v_pred` (e.g. `[B]` or `[B, T]`); the loss is
      the weighted mean over the masked elements (0 when the mask is all zero).
  Returns:
    `(loss, {'loss': loss})`.
  """
  if np.shape(v_pred) != np.shape(v_target):
    raise ValueError(f"v_target must have the shape of v_pred {np.shape(v_pred)}, "
                     f"got {np.shape(v_target)}")
  se = jnp.square(_f32(v_pred) - _f32(v_target))
  if mask is None:
    loss = se.mean()
  else:
    m = _f32(mask)
    if m.shape != se.shape[:m.ndim]:
      raise ValueError(f"mask must match the leading dims of v_pred {se.shape}, got {m.shape}")
    m = jnp.broadcast_to(m.reshape(m.shape + (1,) * (se.ndim - m.ndim)), se.shape)
    total = m.sum()
    loss = jnp.where(total > 0, (se * m).sum() / jnp.where(total > 0, total, 1.0), 0.0)
  return loss, {"loss": loss}


def per_frame_error(v_pred, v_target):
  """Mean squared error over H, W, C: `[B, T, H, W, C]` -> `[B, T]` (float32 or wider)."""
  if np.ndim(v_pred) != 5 or np.shape(v_pred) != np.shape(v_target):
    raise ValueError(f"v_pred and v_target must both be [B, T, H, W, C], got "
                     f"{np.shape(v_pred)} and {np.shape(v_target)}")
  return jnp.square(_f32(v_pred) - _f32(v_target)).mean(axis=(2, 3, 4))


def flow_dpo_loss(err_theta_a, err_ref_a, err_theta_b, err_ref_b, labels, beta,
                  positive_lambda=0.0, winner_lambda=0.0):
  """Flow-DPO (Eq. 5), one label per pair.

  Args:
    err_*: `[B]` flow-matching errors averaged over all frames.
    labels: `[B]`, +1 when a is preferred, -1 when b is (0: tie, contributes nothing).
    beta: DPO temperature.
    positive_lambda: weight of the DPO-Positive term (`_dpo`); 0: off.
    winner_lambda: weight of the flow-matching term on the preferred member (`_dpo`); 0: off.
  Returns:
    `(loss, metrics)`: loss is the mean of `-log sigmoid(z)` over non-tie pairs.
  """
  errs = (err_theta_a, err_ref_a, err_theta_b, err_ref_b)
  _check_shapes(errs, labels, 1)
  _check_label_values(labels)
  errs = [_f32(e)[:, None] for e in errs]
  labels = jnp.asarray(labels)[:, None]
  return _dpo(*errs, labels, jnp.ones(labels.shape, bool), beta, positive_lambda,
              winner_lambda=winner_lambda)


def segment_mean(values, segment_ids):
  """Per-segment means of `values [B, T]` by integer `segment_ids [B, T]`.

  Segment ids run over `[0, T)`; frames with a negative id belong to no segment.
  Returns:
    `(means [B, T], counts [B, T])`, indexed by segment id (count 0: no such segment).
  """
  t = values.shape[-1]
  onehot = (segment_ids[..., None] == jnp.arange(t)).astype(values.dtype)  # [B, T, S=T]
  counts = onehot.sum(-2)
  return jnp.einsum("bt,bts->bs", values, onehot) / jnp.maximum(counts, 1), counts


def dense_dpo_loss(err_theta_a, err_ref_a, err_theta_b, err_ref_b, labels, beta,
                   granularity="frame", segment_ids=None, positive_lambda=0.0,
                   pair_reduction="mean", winner_lambda=0.0):
  """DenseDPO (Eq. 7): per-frame (or per-segment) labels and z.

  Args:
    err_*: `[B, T]` per-latent-frame flow-matching errors.
    labels: `[B, T]` per-latent-frame labels in {+1, -1, 0 (tie)}.
    beta: DPO temperature.
    granularity: 'frame' (one z per frame) or 'segment' (errors averaged over each segment's
      frames first, one z per segment; a segment takes label s when all its frames have label s,
      else it is a tie).
    segment_ids: `[B, T]` ints in `[0, T)` (negative: frame in no segment); 'segment' only.
    positive_lambda, pair_reduction, winner_lambda: the DPO-Positive term per unit, how a pair's
      unit losses combine ('mean' or 'sum') and the flow-matching term on the preferred member,
      as in `_dpo`; the defaults are the paper's DenseDPO.
  Returns:
    `(loss, metrics)`: the loss of a pair is the mean of `-log sigmoid(z_j)` over its non-tie
    units; the batch loss is the mean over pairs with at least one non-tie unit.
  """
  errs = (err_theta_a, err_ref_a, err_theta_b, err_ref_b)
  _check_shapes(errs, labels, 2)
  _check_label_values(labels)
  errs = [_f32(e) for e in errs]
  labels = jnp.asarray(labels)
  variant = dict(positive_lambda=positive_lambda, pair_reduction=pair_reduction,
                 winner_lambda=winner_lambda)
  if granularity == "frame":
    return _dpo(*errs, labels, jnp.ones(labels.shape, bool), beta, **variant)
  if granularity != "segment":
    raise ValueError(f"granularity must be 'frame' or 'segment', got {granularity!r}")
  if segment_ids is None:
    raise ValueError("segment_ids [B, T] is required with granularity='segment'")
  if np.shape(segment_ids) != labels.shape:
    raise ValueError(f"segment_ids must have the shape of labels {labels.shape}, "
                     f"got {np.shape(segment_ids)}")
  ids = _concrete(segment_ids)
  if ids is not None and np.any(ids >= labels.shape[-1]):
    raise ValueError(f"segment_ids must be < T={labels.shape[-1]}, got max {ids.max()}")
  segment_ids = jnp.asarray(segment_ids)
  seg_errs = [segment_mean(e, segment_ids)[0] for e in errs]
  n_pos, counts = segment_mean((labels == 1).astype(jnp.float32), segment_ids)
  n_neg, _ = segment_mean((labels == -1).astype(jnp.float32), segment_ids)
  valid = counts > 0
  # Means of indicator variables are exactly 1 only when every frame agrees.
  seg_labels = jnp.where(valid & (n_pos == 1), 1, jnp.where(valid & (n_neg == 1), -1, 0))
  concrete = _concrete(seg_labels)
  if concrete is not None and not concrete.any():
    raise ValueError("labels: every segment is a tie (its frames' labels are 0 or disagree), so "
                     "the DPO loss is undefined; filter all-tie pairs out of the data")
  return _dpo(*seg_errs, seg_labels, valid, beta, **variant)


__all__ = ["flow_matching_loss", "per_frame_error", "flow_dpo_loss", "dense_dpo_loss",
           "segment_mean"]

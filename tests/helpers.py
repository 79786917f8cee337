"""Helpers shared by the tests: tiny datasets, tiny configs and models, float64 references.

Test modules import from here, `tests/tiny_wan.py` and `tests/vlm_server.py`, never from each
other; benchmarks may import from here too, never the reverse. Everything is small and made in
the test: no download, no shipped data.
"""
import json
import threading
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from configs import common
from densedpo_jax.data import arrayrecord_io, schema
from densedpo_jax.model import LoRAConfig, VideoDiT, get_dit_config
from densedpo_jax.training.builders import with_overrides
from densedpo_jax.shapesworld import artifacts, world

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23: float32's relative rounding step.


def gamma(n: int) -> float:
  """Higham's gamma_n = n u / (1 - n u): the relative error bound of n float32 roundings in a row
  (a sum of n + 1 terms errs by at most gamma_n times the sum of their absolute values)."""
  return n * EPS32 / (1 - n * EPS32)


def forward_gap_bound(scale: float, depth: int, reduction: int, reductions_per_block: int = 8
                      ) -> float:
  """A first-order model of max|a - b| for two float32 forwards of the same DiT that add in other
  orders (scan vs loop, blockwise vs XLA attention, context parallel vs one device, JAX vs
  PyTorch): worst-case rounding (n u, not the typical sqrt(n) u) under an assumption on scale.

  Each block has about `reductions_per_block` reductions (q, k, v, scores, weighted values, out,
  fc_in, fc_out) of at most `reduction` terms; each errs by at most gamma(reduction) times the
  absolute sum of its terms, which LayerNorm'd inputs and the tests' weights keep within the
  activations' scale `scale` (max |output|). Both forwards err, each block adds its error to the
  residual stream, and the output projection carries it out: 2 * depth * reductions_per_block *
  gamma(reduction) * scale. (u is taken as 2^-23, twice round-to-nearest's 2^-24.)
  """
  return 2 * depth * reductions_per_block * gamma(reduction) * scale


def euler_gap_bound(num_steps: int, scale: float, ops_per_step: int = 4, lipschitz: float = 1.0
                    ) -> float:
  """Bound on max|a - b| for two float32 runs of the same Euler sampler over t in [0, 1] whose
  roundings differ (another batch size, a fused or batched call): each step rounds at most
  `ops_per_step` times relative to `scale` (the largest |x| or |v| met) in each run, and an error
  already in x grows by at most (1 + L dt) a step, so by e^L in all (L: the velocity's Lipschitz
  constant in x)."""
  return 2 * num_steps * gamma(ops_per_step) * scale * float(np.exp(lipschitz))

TINY_MODEL = dict(width=32, depth=2, num_heads=2)  # The end-to-end tests' VideoDiT.
SMALL = dict(width=32, depth=2, num_heads=2, text_dim=16)  # The model tests' VideoDiT.

# The trainer tests' latent clips `[T, H, W, C]` and text `[L, D]`.
T, H, W, C, L, D = 4, 8, 8, 3, 4, 16


# Record datasets.

def _text(rng, text_dim=D):
  return rng.normal(size=(L, text_dim)).astype(np.float32), np.array([1, 1, 1, 0], bool)


def write_videos(directory, n=32, seed=0):
  """Constant-colour clips whose colour is written in the text: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  recs = []
  for i in range(n):
    colour = rng.uniform(-1, 1, size=C).astype(np.float32)
    emb, mask = _text(rng)
    emb[0, :C] = colour
    latent = np.broadcast_to(colour, (T, H, W, C)).copy()
    recs.append(schema.VideoRecord(f"v{i}", f"clip {i}", emb, mask, latent, num_frames=T, fps=8.0))
  arrayrecord_io.write_records(recs, directory, "videos", num_shards=2)
  return directory


def write_pairs(directory, n=16, seed=0, channels=C, text_dim=D, with_gt=False):
  """Pairs whose winner is smooth and loser noisy, with mixed per-segment winners (`with_gt`:
  the smooth video stored as each pair's ground truth)."""
  rng = np.random.default_rng(seed)
  recs = []
  for i in range(n):
    emb, mask = _text(rng, text_dim)
    smooth = np.broadcast_to(rng.uniform(-1, 1, size=channels),
                             (T, H, W, channels)).astype(np.float32)
    noisy = (smooth + rng.normal(scale=0.8, size=smooth.shape)).astype(np.float32)
    labels = np.array([1, -1], np.int8) if i % 2 else np.array([1, 1], np.int8)
    a = np.concatenate([smooth[:2] if labels[0] == 1 else noisy[:2],
                        smooth[2:] if labels[1] == 1 else noisy[2:]])
    b = np.concatenate([noisy[:2] if labels[0] == 1 else smooth[:2],
                        noisy[2:] if labels[1] == 1 else smooth[2:]])
    recs.append(schema.PairRecord(f"p{i}", "pair", emb, mask, a, b, num_frames=T, fps=8.0,
                                  frames_per_segment=2, source="guided", eta=0.5,
                                  segment_labels=labels, global_label=1, gt_video_id=f"v{i}",
                                  gt_latent=smooth if with_gt else None))
  arrayrecord_io.write_records(recs, directory, "pairs", num_shards=2)
  return directory


def tiny_config(loss, data_dir, **kw):
  """A trainer config for `loss` on `write_videos` / `write_pairs` data, with `kw` overrides."""
  c = common.base()
  c.loss = loss
  c.model.update(width=32, depth=2, num_heads=2, text_dim=D)
  c.lora.rank, c.lora.alpha = 4, 4.0
  c.data.path = data_dir
  c.data.kind, c.data.name = ("videos", "videos") if loss == "flow_matching" else ("pairs", "pairs")
  c.data.batch_size = 8
  c.data.read_threads = 0
  c.optim.warmup_steps = 1
  c.async_checkpointing = False
  c.log_every = 1
  c.checkpoint_every = 100
  if loss == "flow_matching":
    c.lora.rank = 0
    c.optim.lr = 3e-3
  else:
    c.optim.lr = 1e-2
    c.dpo.beta = 200.0
  return with_overrides(c, **kw)


# Models and their inputs.

def dit_inputs(seed, b=2, t=4, h=8, w=8, c=3, l=5, text_dim=16):
  """VideoDiT's inputs: latents `[B, T, H, W, C]`, t `[B]`, text `[B, L, D]`, mask `[B, L]`."""
  k = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k[0], (b, t, h, w, c))
  tt = jax.random.uniform(k[1], (b,))
  text = jax.random.normal(k[2], (b, l, text_dim))
  return x, tt, text, jnp.ones((b, l), bool)


def randomize(tree, seed, scale=0.1):
  """Adds noise to every leaf, so zero-initialised gates and outputs become active."""
  leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(tree))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def lora_setup(seed, **lora_kw):
  """A SMALL VideoDiT with a rank-4 adapter: `(cfg, model, params, lora, inputs)`."""
  cfg = get_dit_config("tiny", **SMALL, lora=LoRAConfig(rank=4, alpha=8.0, **lora_kw))
  model = VideoDiT(cfg)
  x, t, text, mask = dit_inputs(seed)
  variables = model.init(jax.random.key(seed), x, t, text, mask)
  params = randomize(variables["params"], seed + 1)
  return cfg, model, params, nn.unbox(variables["lora"]), (x, t, text, mask)


# Attention.

def qkv(seed, b=2, nq=100, nk=70, h=3, d=16, dtype=jnp.float32):
  """Random q `[B, Nq, H, D]`, k and v `[B, Nk, H, D]`."""
  k = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(kk, (b, n, h, d), dtype) for kk, n in zip(k, (nq, nk, nk)))


def numpy_attention(q, k, v, mask):
  """float64 softmax attention, `[B, N, H, D]` layout, `mask [B, 1, Nq, Nk]` (True = attend)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhnm,bmhd->bnhd", p, v)


# ShapesWorld clips and pairs.

PROMPT = "a red circle moves to the right"


def world_video(speed, start=(8.0, 5.0), direction="right"):
  """A rendered ShapesWorld clip of a red circle, `[16, H, W, 3]`."""
  return world.render(world.Scene("red", "circle", direction, speed, start))


def world_pair(pid, a, b, prompt=PROMPT):
  """A PairRecord of two 16-frame clips in segments of 4 frames."""
  return schema.PairRecord(id=pid, prompt=prompt, text_emb=np.zeros((4, 8), np.float32),
                           text_mask=np.ones(4, bool), latent_a=np.asarray(a, np.float32),
                           latent_b=np.asarray(b, np.float32), num_frames=16, fps=8.0,
                           frames_per_segment=4, seed_a=1, seed_b=2)


def corrupt_segment(v, segment, kind="ghosting", severity=0.8):
  """`v` with a ShapesWorld artifact in segment `segment` (of 4 frames) only."""
  return artifacts.corrupt(v, artifacts.segment_frames(segment, 4, 16), kind, severity, rng=segment)


# DPO references (float64 NumPy, written from the formulas as loops).

def dpo_units_reference(e, labels, valid, beta, positive_lambda=0.0, pair_reduction="mean",
                        winner_lambda=0.0):
  """Loss and metrics from per-unit errors e = (ta, ra, tb, rb) `[B, U]`, written as loops; a
  unit's z loses `beta / 2 * positive_lambda * max(0, winner's policy error - its reference
  error)` inside the log-sigmoid (DPO-Positive), a unit's loss gains `winner_lambda * winner's
  policy error` (RPO), a pair's units are averaged or summed."""
  ta, ra, tb, rb = (np.asarray(x, np.float64) for x in e)
  pair_losses, zs, wins = [], [], []
  n_valid = 0
  for i in range(ta.shape[0]):
    unit_losses = []
    for j in range(ta.shape[1]):
      if not valid[i, j]:
        continue
      n_valid += 1
      s = labels[i, j]
      if s == 0:
        continue
      z = -(beta / 2) * s * ((ta[i, j] - ra[i, j]) - (tb[i, j] - rb[i, j]))
      wins.append((ta[i, j], tb[i, j], ra[i, j], rb[i, j]) if s == 1
                  else (tb[i, j], ta[i, j], rb[i, j], ra[i, j]))
      # -log sigmoid(z), DPO-Positive's hinge on the winner inside it.
      hinge = (beta / 2) * positive_lambda * max(0.0, wins[-1][0] - wins[-1][2])
      unit_losses.append(np.logaddexp(0.0, -(z - hinge)) + winner_lambda * wins[-1][0])
      zs.append(z)
    if unit_losses:
      pair_losses.append(np.mean(unit_losses) if pair_reduction == "mean" else np.sum(unit_losses))
  zs, wins = np.array(zs), np.array(wins)
  return {
      "loss": np.mean(pair_losses),
      "implicit_acc": np.mean((zs > 0) + 0.5 * (zs == 0)),
      "reward_margin": zs.mean(),
      "policy_err_win": wins[:, 0].mean(), "policy_err_lose": wins[:, 1].mean(),
      "ref_err_win": wins[:, 2].mean(), "ref_err_lose": wins[:, 3].mean(),
      "nontie_frac": len(zs) / n_valid,
      "winner_worse_frac": np.mean(wins[:, 0] > wins[:, 2]),
  }


def dense_dpo_reference(errs: dict, labels, beta: float) -> float:
  """DenseDPO's loss (frame units) from `dpo_errors`' dict of `[B, T]` errors, in float64."""
  e = [errs[k] for k in ("err_theta_a", "err_ref_a", "err_theta_b", "err_ref_b")]
  return float(dpo_units_reference(e, np.asarray(labels), np.ones(np.shape(labels), bool),
                                   beta)["loss"])


# Evaluation.

def evaluation_setup(data: str):
  """`evaluate.sample_model`'s inputs: a tiny random model, the prompts of the ShapesWorld
  clips in `data`, 2 seeds each, batches of 3 (10 samples: 4 batches, the last of 1)."""
  import ml_collections
  from densedpo_jax.tasks import evaluate
  cfg = get_dit_config("tiny", width=32, depth=2, num_heads=2, text_dim=64)
  zeros = lambda shape: np.zeros(shape, np.float32)
  variables = VideoDiT(cfg).init(jax.random.key(0), zeros((1, 16, 16, 16, 3)), zeros((1,)),
                                 zeros((1, 16, 64)), np.ones((1, 16), bool))
  params = nn.unbox(randomize(variables["params"], 3))
  records = evaluate.prompt_set(arrayrecord_io.ShardedSource(data, "videos"), 5)
  spec = ml_collections.ConfigDict(dict(seeds_per_prompt=2, batch_size=3, seed=7, num_steps=2,
                                        cfg_scale=1.0))
  return params, records, spec, cfg


def serve_in_thread(store, host="127.0.0.1", token=None):
  """`(server, base URL)` of an annotation server on a free port, serving from a daemon thread."""
  from densedpo_jax.annotate.server import make_server
  server = make_server(store, host, 0, token)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


def http_call(url, body=None, headers=None):
  """`(status, parsed JSON or bytes)` of a GET (or a JSON POST when `body` is given)."""
  data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
  headers = dict({"Content-Type": "application/json"} if body is not None else {}, **(headers or {}))
  request = urllib.request.Request(url, data=data, headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=10) as r:
      raw, kind, status = r.read(), r.headers["Content-Type"], r.status
  except urllib.error.HTTPError as e:
    raw, kind, status = e.read(), e.headers["Content-Type"], e.code
  return status, (json.loads(raw) if kind == "application/json" else raw)

"""VideoDiT: shapes, zero init, patchify, text masking, RoPE, layouts, presets, FLOPs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from densedpo_jax.model import DiTConfig, LoRAConfig, VideoDiT, forward_flops, get_dit_config, param_count
from densedpo_jax.model.layers import apply_rope, patchify, rope_3d, unpatchify
from densedpo_jax.model.layout import stack_blocks, unstack_blocks
from tests.helpers import (SMALL, dit_inputs as _inputs, forward_gap_bound, gamma,
                           randomize)

def _model(**kw):
  cfg = get_dit_config("tiny", **{**SMALL, **kw})
  return VideoDiT(cfg), cfg


def test_shape_dtype_and_zero_output_at_init():
  model, _ = _model()
  x, t, text, mask = _inputs(np.random.randint(1 << 30))
  variables = model.init(jax.random.key(0), x, t, text, mask)
  v = model.apply(variables, x, t, text, mask)
  assert v.shape == x.shape and v.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(v), 0.0)
  # Once the zero-initialised layers move, the output is no longer zero.
  v = model.apply({"params": randomize(variables["params"], 1)}, x, t, text, mask)
  assert float(jnp.abs(v).mean()) > 1e-3


@pytest.mark.parametrize("patch", [(1, 4, 4), (2, 2, 4), (1, 1, 1)])
def test_patchify_round_trip_and_layout(patch):
  x = np.random.randn(2, 4, 8, 8, 3).astype(np.float32)
  p = np.asarray(patchify(jnp.asarray(x), patch))
  pt, ph, pw = patch
  assert p.shape == (2, 4 // pt, 8 // ph, 8 // pw, pt * ph * pw * 3)
  # Patch (i, j, k) holds the block x[:, i*pt:(i+1)*pt, j*ph:..., k*pw:...] flattened in (pt, ph, pw, c).
  i, j, k = 4 // pt - 1, 0, 8 // pw - 1
  block = x[:, i * pt:(i + 1) * pt, j * ph:(j + 1) * ph, k * pw:(k + 1) * pw, :]
  np.testing.assert_array_equal(p[:, i, j, k], block.reshape(2, -1))
  np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(p), patch, 3)), x)


def test_patchify_rejects_indivisible_shape():
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    patchify(jnp.zeros((1, 4, 10, 8, 3)), (1, 4, 4))


def test_padded_text_tokens_change_nothing():
  model, _ = _model()
  x, t, text, _ = _inputs(np.random.randint(1 << 30), l=6)
  mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  params = randomize(model.init(jax.random.key(0), x, t, text, mask)["params"], 2)
  run = lambda txt: np.asarray(model.apply({"params": params}, x, t, txt, mask))
  base = run(text)
  garbage = jnp.where(mask[..., None], text, 100.0 * jax.random.normal(jax.random.key(3), text.shape))
  np.testing.assert_allclose(run(garbage), base, atol=1e-5)
  # A visible token does matter.
  assert np.abs(run(text.at[0, 1].add(3.0)) - base)[0].max() > 1e-3


def test_null_text_ignores_the_prompt():
  model, _ = _model()
  x, t, text, mask = _inputs(np.random.randint(1 << 30))
  params = randomize(model.init(jax.random.key(0), x, t, text, mask)["params"], 4)
  null = jnp.array([True, False])
  a = model.apply({"params": params}, x, t, text, mask, null_text=null)
  b = model.apply({"params": params}, x, t, -text, mask, null_text=null)
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-3


def test_rope_depends_only_on_relative_position():
  head_dim, grid = 24, (4, 5, 6)
  cos, sin = rope_3d(grid, head_dim)
  rng = np.random.default_rng()
  q = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
  index = lambda p: np.ravel_multi_index(p, grid)

  def score(pq, pk):
    iq, ik = index(pq), index(pk)
    rq = apply_rope(q, cos[iq:iq + 1], sin[iq:iq + 1])
    rk = apply_rope(k, cos[ik:ik + 1], sin[ik:ik + 1])
    return float(jnp.sum(rq * rk))

  shift = np.array([1, 2, 3])
  for pq, pk in [((0, 0, 0), (2, 1, 0)), ((1, 2, 1), (0, 0, 2))]:
    moved = score(tuple(np.array(pq) + shift), tuple(np.array(pk) + shift))
    np.testing.assert_allclose(moved, score(pq, pk), rtol=1e-4, atol=1e-5)
  # A different offset along any axis gives a different score.
  assert abs(score((0, 0, 0), (1, 0, 0)) - score((0, 0, 0), (0, 0, 0))) > 1e-4
  # The rotation preserves norms.
  np.testing.assert_allclose(float(jnp.linalg.norm(apply_rope(q, cos[7:8], sin[7:8]))),
                             float(jnp.linalg.norm(q)), rtol=1e-5)


@pytest.mark.parametrize("variant", [dict(scan_layers=True), dict(remat_policy="full"),
                                     dict(scan_layers=True, remat_policy="dots_saveable")])
def test_scan_and_remat_agree_with_plain_loop(variant):
  lora = LoRAConfig(rank=2)
  plain, cfg = _model(lora=lora)
  other, ocfg = _model(lora=lora, **variant)
  x, t, text, mask = _inputs(np.random.randint(1 << 30))
  variables = plain.init(jax.random.key(0), x, t, text, mask)
  variables = {c: randomize(variables[c], i) for i, c in enumerate(("params", "lora"))}
  convert = stack_blocks if ocfg.scan_layers else (lambda tree, depth: tree)
  other_vars = {c: convert(tree, cfg.depth) for c, tree in variables.items()}
  loss = lambda m, v: jnp.sum(m.apply(v, x, t, text, mask) ** 2)
  # Two float32 forwards that add in other orders (each output within forward_gap_bound), then a
  # sum of n squares: |dL| <= 2 sum|v| dv + dv^2 n + 2 gamma_n L.
  v = np.asarray(plain.apply(variables, x, t, text, mask), np.float64)
  dv = forward_gap_bound(float(np.abs(v).max()), cfg.depth, max(4 * cfg.width, cfg.time_freq_dim))
  want = float(loss(plain, variables))
  tol = 2 * np.abs(v).sum() * dv + v.size * dv ** 2 + 2 * gamma(v.size) * want
  np.testing.assert_allclose(float(loss(other, other_vars)), want, rtol=0, atol=tol)
  g_plain = jax.grad(lambda l: loss(plain, {**variables, "lora": l}))(variables["lora"])
  g_other = jax.grad(lambda l: loss(other, {**other_vars, "lora": l}))(other_vars["lora"])
  if ocfg.scan_layers:
    g_other = unstack_blocks(g_other, cfg.depth)
  # float32 sums in another order: a backward pass has about twice the forward's reductions.
  n = max(4 * cfg.width, cfg.time_freq_dim)  # The MLP's or the timestep embedding's sum.
  bound = lambda b: forward_gap_bound(float(np.abs(b).max()), cfg.depth, n, 16)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=bound(b)),
                         g_other, g_plain)


def _hand_param_count(cfg: DiTConfig) -> int:
  d, dt, m, p, f, hd = cfg.width, cfg.text_dim, cfg.mlp_dim, cfg.patch_dim, cfg.time_freq_dim, cfg.head_dim
  attn = 4 * (d * d + d) + 2 * hd  # q, k, v, out (+ bias) and RMSNorm scales on q, k.
  block = (d * 6 * d + 6 * d) + 2 * attn + 2 * d + (d * m + m + m * d + d)
  top = dt + (f * d + d) + (d * d + d) + (dt * d + d) + (d * d + d) + (dt * d + d) + (d * d + d)
  top += (p * d + d) + (d * 2 * d + 2 * d) + (d * p + p)
  return cfg.depth * block + top


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "paper"])
def test_parameter_count_matches_hand_formula(preset):
  cfg = get_dit_config(preset)
  assert param_count(cfg) == _hand_param_count(cfg)
  lora = cfg.replace(lora=LoRAConfig(rank=8, targets=("self_q", "mlp_in")))
  assert param_count(lora, "lora") == cfg.depth * 8 * ((cfg.width + cfg.width) + (cfg.width + cfg.mlp_dim))


def test_paper_preset_is_about_three_billion_parameters():
  assert 2.9e9 < param_count(get_dit_config("paper")) < 3.1e9


def test_forward_flops_match_xla_cost_analysis():
  model, cfg = _model(lora=LoRAConfig(rank=4))
  x, t, text, mask = _inputs(0, b=2, t=4, h=16, w=16)
  variables = model.init(jax.random.key(0), x, t, text, mask)
  compiled = jax.jit(lambda v: model.apply(v, x, t, text, mask)).lower(variables).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = forward_flops(cfg, 2, 4, 16, 16, 5)
  # XLA also counts elementwise work, which our matmul-only count leaves out.
  assert 0.85 * cost["flops"] < ours <= 1.0 * cost["flops"]


def test_bad_inputs_name_the_argument():
  model, _ = _model()
  x, t, text, mask = _inputs(0)
  variables = model.init(jax.random.key(0), x, t, text, mask)
  with pytest.raises(ValueError, match="x has shape"):
    model.apply(variables, x[..., :2], t, text, mask)
  with pytest.raises(ValueError, match="t has shape"):
    model.apply(variables, x, t[:1], text, mask)
  with pytest.raises(ValueError, match="text_mask has shape"):
    model.apply(variables, x, t, text, mask[:, :3])
  with pytest.raises(KeyError, match="Unknown DiTConfig field"):
    get_dit_config("tiny", widht=3)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
  model32, _ = _model()
  model16, _ = _model(dtype="bfloat16")
  x, t, text, mask = _inputs(np.random.randint(1 << 30))
  variables = model16.init(jax.random.key(0), x, t, text, mask)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(nn.unbox(variables)))
  params = {"params": randomize(variables["params"], 5)}
  v32 = model32.apply(params, x, t, text, mask)
  v16 = model16.apply(params, x, t, text, mask)
  assert v16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(v16 - v32) / jnp.linalg.norm(v32))
  assert rel < 3e-2

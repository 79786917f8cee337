"""Wan 2.1 in Flax without PyTorch: RoPE, text padding, layouts, presets, the family switch, and
DenseDPO through the real trainer. Parity with diffusers is in test_wan_parity.py."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from densedpo_jax.training import train
from densedpo_jax.training.builders import model_config
from densedpo_jax.model import (LoRAConfig, WanConfig, build, forward_flops, get_model_config,
                                load_pretrained, param_count, pretrained)
from densedpo_jax.model.layers import rope_3d, rope_axis_dims
from densedpo_jax.model.layout import stack_blocks
from densedpo_jax.model.wan import apply_rope_interleaved
from tests.helpers import randomize
from tests.helpers import D, forward_gap_bound, tiny_config, write_pairs

TINY = dict(width=32, depth=2, num_heads=2, ffn_dim=48, in_channels=3, text_dim=D, text_len=8)


def tiny_wan(**kw) -> WanConfig:
  return get_model_config("wan", "wan2.1-t2v-1.3b", **{**TINY, **kw})


def _inputs(seed, cfg, b=2, f=3, h=4, w=6, l=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, f, h, w, cfg.in_channels)).astype(np.float32)
  text = rng.normal(size=(b, l, cfg.text_dim)).astype(np.float32)
  mask = np.ones((b, l), bool)
  mask[1, 3:] = False
  return jnp.asarray(x), jnp.asarray(rng.uniform(size=b).astype(np.float32)), jnp.asarray(text), \
      jnp.asarray(mask)


def _init(cfg, seed=0):
  x, t, text, mask = _inputs(seed, cfg)
  variables = build(cfg).init(jax.random.key(seed), x, t, text, mask)
  return {"params": randomize(variables["params"], seed + 1)}


def test_rope_split_and_interleaved_rotation_match_a_complex_reference():
  assert rope_axis_dims(128) == (44, 42, 42)
  grid, dh = (3, 4, 5), 12
  cos, sin = rope_3d(grid, dh)
  x = np.random.default_rng(0).normal(size=(2, 60, 3, dh))
  out = np.asarray(apply_rope_interleaved(jnp.asarray(x, jnp.float32), cos, sin))
  # Reference: each adjacent pair is a complex number times exp(i * angle), angles per axis band
  # (t: 4 channels, h: 4, w: 4) with frequencies theta^(-2k/dim), in float64.
  pos = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, 3)
  angles = np.concatenate([pos[:, a:a + 1] * 1e4 ** (-np.arange(0, d, 2) / d)
                           for a, d in enumerate(rope_axis_dims(dh))], axis=1)
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)[None, :, None, :]
  want = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
  np.testing.assert_allclose(out, want, atol=2e-5)


def test_presets_have_the_published_parameter_counts():
  assert param_count(get_model_config("wan", "wan2.1-t2v-1.3b")) == 1_418_996_800
  assert param_count(get_model_config("wan", "wan2.1-t2v-14b")) == 14_288_491_584


def test_text_is_zero_padded_to_text_len_and_padding_content_is_ignored():
  cfg = tiny_wan()
  variables = _init(cfg)
  model = build(cfg)
  x, t, text, mask = _inputs(1, cfg)
  v = model.apply(variables, x, t, text, mask)
  # The same prompts stored with other padding: garbage under the mask, or explicit zero tokens.
  garbage = jnp.where(mask[..., None], text, 123.0)
  np.testing.assert_allclose(model.apply(variables, x, t, garbage, mask), v, atol=1e-5)
  padded = jnp.pad(jnp.where(mask[..., None], text, 0), ((0, 0), (0, 3), (0, 0)))
  np.testing.assert_allclose(model.apply(variables, x, t, padded, jnp.ones((2, 8), bool)), v,
                             atol=1e-5)
  # Unmasked attention sees the zero tokens: masking them is a different model.
  masked = build(cfg.replace(cross_attn_mask=True)).apply(variables, x, t, text, mask)
  assert float(jnp.abs(masked - v).max()) > 1e-3
  with pytest.raises(ValueError, match="text_len"):
    model.apply(variables, x, t, jnp.zeros((2, 9, D)), jnp.ones((2, 9), bool))


def test_scanned_and_rematerialised_layers_equal_the_loop():
  cfg = tiny_wan()
  variables = _init(cfg)
  x, t, text, mask = _inputs(2, cfg)
  v = build(cfg).apply(variables, x, t, text, mask)
  scanned = {"params": stack_blocks(variables["params"], cfg.depth)}
  v_scan = build(cfg.replace(scan_layers=True, remat_policy="full")).apply(scanned, x, t, text, mask)
  # Two float32 forwards that add in other orders; the longest reduction is the timestep
  # embedding's (time_freq_dim) or the MLP's (ffn_dim).
  reduction = max(cfg.time_freq_dim, cfg.ffn_dim, cfg.text_dim)
  tol = forward_gap_bound(float(np.abs(v).max()), cfg.depth, reduction)
  np.testing.assert_allclose(v_scan, v, rtol=0, atol=tol)


def test_lora_off_is_the_base_model_and_on_differs():
  cfg = tiny_wan()
  base = _init(cfg)
  x, t, text, mask = _inputs(3, cfg)
  lora_cfg = cfg.replace(lora=LoRAConfig(rank=4, alpha=8.0))
  lora = randomize(build(lora_cfg).init(jax.random.key(0), x, t, text, mask)["lora"], 5)
  variables = {"params": base["params"], "lora": lora}
  v_base = build(cfg).apply(base, x, t, text, mask)
  off = build(lora_cfg).apply(variables, x, t, text, mask, lora_enabled=False)
  on = build(lora_cfg).apply(variables, x, t, text, mask)
  np.testing.assert_array_equal(off, v_base)
  assert float(jnp.abs(on - v_base).max()) > 1e-3
  # Every LoRA target of every block has an adapter.
  block = nn.unbox(lora)["block_0"]
  assert sorted(block["attn1"]) == ["to_k", "to_out", "to_q", "to_v"]
  assert sorted(block["ffn"]) == ["net_0", "net_2"]


def test_family_switch_in_the_run_config():
  c = tiny_config("dense_dpo", "unused", **{"model.family": "wan",
                                            "model.preset": "wan2.1-t2v-14b"})
  cfg = model_config(c)
  assert isinstance(cfg, WanConfig) and cfg.width == 32 and cfg.lora.rank == 4
  c = tiny_config("dense_dpo", "unused", **{"model.ffn_dim": 64})  # A Wan field on a VideoDiT.
  with pytest.raises(KeyError, match="ffn_dim"):
    model_config(c)
  c = tiny_config("dense_dpo", "unused", **{"model.family": "wan"})  # Preset 'tiny' is VideoDiT's.
  with pytest.raises(KeyError, match="wan2.1-t2v-1.3b"):
    model_config(c)


@pytest.mark.e2e
def test_dense_dpo_on_a_tiny_wan_through_the_trainer(tmp_path):
  data = write_pairs(str(tmp_path / "pairs"))
  cfg = tiny_wan()
  base = _init(cfg, seed=3)["params"]
  pretrained.save_params(str(tmp_path / "base"), base, cfg)
  config = tiny_config("dense_dpo", data, total_steps=12, init_from=str(tmp_path / "base"), **{
      "model.family": "wan", "model.preset": "wan2.1-t2v-1.3b", "data.batch_size": 16,
      "optim.lr": 1e-3, "dpo.beta": 500.0, "mesh.num_devices": 1, "checkpoint_every": 12, **{f"model.{k}": v for k, v in TINY.items()}})
  history = train.train_and_evaluate(config, str(tmp_path / "run"))
  # Policy == reference at step 1 (the two calls differ only by float rounding): z ~ 0, loss log 2.
  assert abs(history[1]["loss"] - np.log(2.0)) < 1e-4
  assert abs(history[1]["reward_margin"]) < 1e-3
  # The batch is every pair each step: training separates winners from losers on it.
  late = range(8, 13)  # t and noise are drawn anew each step: average a few.
  assert np.mean([history[s]["implicit_acc"] for s in late]) > 0.7
  assert np.mean([history[s]["loss"] for s in late]) < np.log(2.0) - 0.05
  # Only the adapter moved: the exported params (LoRA folded in) differ from the base only in
  # LoRA-target kernels.
  module, exported = load_pretrained(str(tmp_path / "run"))
  assert isinstance(module.cfg, WanConfig) and module.cfg.lora.rank == 0
  want = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(base)[0]}
  got = jax.tree_util.tree_flatten_with_path(exported["params"])[0]
  assert len(got) == len(want)
  changed = [jax.tree_util.keystr(p) for p, v in got
             if not np.array_equal(v, want[jax.tree_util.keystr(p)])]
  assert changed and all(("attn" in p or "ffn" in p) and "kernel" in p for p in changed)


def test_the_trainer_never_imports_torch_or_interop():
  code = ("import sys, densedpo_jax.training.train, densedpo_jax.tasks.pairs, densedpo_jax.tasks.evaluate; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', "
          "'transformers') or m.startswith('densedpo_jax.interop')]; print(bad); "
          "sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", [{}, dict(in_channels=36, out_channels=16, image_dim=48)])
def test_forward_flops_match_xla_cost_analysis(variant):
  cfg = tiny_wan(lora=LoRAConfig(rank=4), width=64, ffn_dim=96, **variant)
  x, t, text, mask = _inputs(0, cfg, f=4, h=8, w=8)
  kw = {"image_emb": jnp.ones((2, 9, cfg.image_dim))} if cfg.image_dim else {}
  variables = build(cfg).init(jax.random.key(0), x, t, text, mask)
  compiled = jax.jit(lambda v: build(cfg).apply(v, x, t, text, mask, **kw)).lower(
      variables).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = forward_flops(cfg, 2, 4, 8, 8, text_len=5, image_tokens=9)  # Pads the text to 8 itself.
  # XLA also counts elementwise work, which our matmul-only count leaves out.
  assert 0.85 * cost["flops"] < ours <= 1.0 * cost["flops"]


def test_guided_pairs_from_a_tiny_wan_through_task_pairs(tmp_path):
  """task=pairs with `model.family='wan'`: each member is Algo. 2 run with the Wan model."""
  import functools
  from configs import pairs as pairs_config
  from densedpo_jax.tasks import pairs
  from densedpo_jax.objectives import flow
  from densedpo_jax.data import arrayrecord_io
  from tests.helpers import write_videos
  cfg = tiny_wan()
  params = _init(cfg, seed=4)["params"]
  pretrained.save_params(str(tmp_path / "base"), params, cfg)
  c = pairs_config.get_config("guided")
  c.init_from = str(tmp_path / "base")
  c.data.update(kind="videos", path=write_videos(str(tmp_path / "videos"), n=3), name="videos")
  c.model.update(family="wan", preset="wan2.1-t2v-1.3b", **TINY)
  c.pairs.update(num_pairs=3, pairs_per_part=2, batch_size=2, num_steps=4, eta_range=(0.5, 0.5),
                 out_dir=str(tmp_path / "out"))
  assert pairs.main(c)["num_records"] == 3
  record = next(iter(arrayrecord_io.iter_records(str(tmp_path / "out"), "pairs")))
  video = arrayrecord_io.decode_raw(arrayrecord_io.ShardedSource(c.data.path, "videos")[0])
  velocity_fn = functools.partial(build(cfg).apply, {"params": params})
  want = flow.guided_sample(velocity_fn, jnp.asarray(video.latent)[None],
                            jax.random.key(record.seed_a)[None], 0.5,
                            jnp.asarray(video.text_emb)[None], jnp.asarray(video.text_mask)[None],
                            num_steps=4)
  np.testing.assert_allclose(record.latent_a, np.asarray(want[0]), atol=1e-4)
  # The model moved the sample away from the noised ground truth (v != 0).
  noised = 0.5 * video.latent + 0.5 * np.asarray(
      jax.random.normal(jax.random.key(record.seed_a), video.latent.shape))
  assert np.abs(record.latent_a - noised).max() > 1e-2


SHIPPED = [("wan1.3b", "wan2.1-t2v-1.3b", (21, 60, 104)), ("wan14b", "wan2.1-t2v-14b", (21, 60, 104)),
           ("wan2.1-i2v-14b", "wan2.1-i2v-14b", (21, 60, 104)),
           ("wan2.2-ti2v-5b", "wan2.2-ti2v-5b", (31, 44, 80)),  # 121 frames of 704 x 1280.
           ("wan2.2-t2v-a14b-high", "wan2.2-t2v-a14b", (21, 60, 104)),
           ("wan2.2-i2v-a14b-low", "wan2.2-i2v-a14b", (21, 60, 104)),
           ("wan2.2-t2v-a14b-both", "wan2.2-t2v-a14b", (21, 60, 104))]  # 8 x 141 GB.


@pytest.mark.parametrize("arg,preset,latent", SHIPPED)
def test_shipped_wan_configs(arg, preset, latent):
  from configs import dense
  c = dense.get_config(arg)
  cfg = model_config(c, portable_attention=False)  # As shipped (a CPU would run blockwise).
  big = get_model_config("wan", preset).width == 5120
  assert isinstance(cfg, WanConfig) and cfg == get_model_config("wan", preset).replace(
      dtype="bfloat16", scan_layers=True, remat_policy="full", attention_impl="cudnn",
      lora=cfg.lora, param_dtype="bfloat16" if big else "float32")
  assert c.expert == (arg.rsplit("-", 1)[1] if "a14b" in arg else "")
  assert (cfg.lora.rank, cfg.lora.alpha, c.data.batch_size, c.total_steps) == (128, 128.0, 256, 1000)
  # The shipped mesh and accumulation fit 8 x 80 GB at 81 frames by the memory plan
  # (docs/scaling.md), one pair a micro-step at least; both A14B experts in one run, 8 x 141 GB.
  from densedpo_jax import plan
  from densedpo_jax.training.sharding import MESH_AXES, resolve_mesh_shape
  mesh = dict(zip(MESH_AXES, resolve_mesh_shape(c.mesh.shape, 8)))
  assert plan.videos_per_device(c, mesh) >= 2
  gib = 141 if c.expert == "both" else 80
  assert plan.plan(c, cfg, latent, 512, mesh)["total"] < 0.9 * gib * 2 ** 30
  assert c.task == "train" and c.loss == "dense_dpo"


def test_an_a14b_recipe_names_its_expert():
  from configs import dense, sft
  for job in (dense, sft):
    with pytest.raises(ValueError, match=r"arg :wan2.2-t2v-a14b names two experts: use "
                                         r":wan2.2-t2v-a14b-high or :wan2.2-t2v-a14b-low .*"
                                         r":wan2.2-t2v-a14b-both"):
      job.get_config("wan2.2-t2v-a14b")
    with pytest.raises(ValueError, match=r"'wan2.2-i2v-a14b-high', 'wan2.2-i2v-a14b-low'"):
      job.get_config("wan2.2")

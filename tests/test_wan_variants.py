"""The Wan variants beyond Wan 2.1 text-to-video against diffusers' `WanTransformer3DModel`:
Wan 2.1 image-to-video (36 input channels, 16 out, the CLIP image branch), Wan 2.2 TI2V (48
channels, a noise level per latent frame) and the published shapes of every preset. Weights go
torch -> safetensors -> our converter -> Flax. No download: every model is built from a config."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from densedpo_jax.model import get_model_config, load_pretrained, wan_weights  # noqa: E402
from densedpo_jax.model.registry import abstract_params  # noqa: E402
from tests.helpers import forward_gap_bound  # noqa: E402
from tests.tiny_wan import tiny_transformer  # noqa: E402

PIPELINE_TEXT_LEN = 512  # diffusers' Wan attention splits image from text tokens at 512 text tokens.
# What tests/tiny_wan.tiny_transformer builds (the round trip below expects these values).
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=32,
            freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
VARIANTS = {  # Each variant's diffusers config beyond TINY (tiny_transformer's defaults).
    "i2v_wan2.1": dict(in_channels=36, out_channels=16, image_dim=20, added_kv_proj_dim=24),
    "ti2v_wan2.2": dict(in_channels=48, out_channels=48),
    "i2v_wan2.2": dict(in_channels=36, out_channels=16),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
  """`(variant, torch model, our module, our variables)`, ours read from the saved folder."""
  model = tiny_transformer(0, **VARIANTS[request.param])
  folder = str(tmp_path_factory.mktemp(request.param) / "transformer")
  model.save_pretrained(folder)
  module, variables = load_pretrained(folder, text_len=PIPELINE_TEXT_LEN)
  return request.param, model, module, variables


def _inputs(cfg, seed, per_frame_t, b=2, f=3, h=4, w=6, l=5, image_tokens=7):
  rng = np.random.default_rng(seed)
  print(f"input seed {seed}")
  mask = np.ones((b, l), bool)
  mask[1, 3:] = False
  t = rng.uniform(0.01, 1, size=(b, f) if per_frame_t else b).astype(np.float32)
  if per_frame_t:
    t[:, 0] = 0.0  # TI2V's conditioning first frame.
  image = (rng.normal(size=(b, image_tokens, cfg.image_dim)).astype(np.float32)
           if cfg.image_dim else None)
  return (rng.normal(size=(b, f, h, w, cfg.in_channels)).astype(np.float32), t,
          rng.normal(size=(b, l, cfg.text_dim)).astype(np.float32), mask, image)


def _torch_forward(model, cfg, x, t, text, mask, image):
  """diffusers' call as its pipelines make it: channels first, t * 1000 (per token when given
  per frame, as `expand_timesteps` builds it), text zeroed past its mask and padded to 512."""
  padded = np.pad(np.where(mask[..., None], text, 0),
                  ((0, 0), (0, PIPELINE_TEXT_LEN - text.shape[1]), (0, 0)))
  if t.ndim == 2:  # Every token of frame f at t[:, f]: (F, H/2, W/2) tokens in row-major order.
    _, f, h, w, _ = x.shape
    t = np.repeat(t, (h // cfg.patch_size[1]) * (w // cfg.patch_size[2]), axis=1)
  kwargs = {} if image is None else {"encoder_hidden_states_image": torch.from_numpy(image)}
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t * 1000),
                torch.from_numpy(padded), return_dict=False, **kwargs)[0]
  return out.float().permute(0, 2, 3, 4, 1).numpy()


def _rel(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _parity_bound(depth: int) -> float:
  """As for Wan 2.1 (tests/test_wan_parity.py), with the longest reduction now the 512 padded
  text tokens that each query's weighted sum runs over, and 4 more reductions per block for the
  image branch (its k, v, scores and weighted values)."""
  return forward_gap_bound(1.0, depth, PIPELINE_TEXT_LEN, reductions_per_block=12)


@pytest.mark.parametrize("per_frame_t", [False, True])
def test_whole_model_equals_diffusers_in_float32(tiny, per_frame_t):
  variant, model, module, variables = tiny
  cfg = module.cfg
  x, t, text, mask, image = _inputs(cfg, int(np.random.randint(1 << 30)), per_frame_t)
  kwargs = {} if image is None else {"image_emb": jnp.asarray(image)}
  ours = module.apply(variables, *map(jnp.asarray, (x, t, text, mask)), **kwargs)
  assert ours.shape == x.shape[:4] + (VARIANTS[variant]["out_channels"],)
  ref = _torch_forward(model, cfg, x, t, text, mask, image)
  print(f"{variant}, {'per-frame' if per_frame_t else 'one'} level: relative gap {_rel(ours, ref):.2e}")
  assert _rel(ours, ref) <= _parity_bound(cfg.depth)


def test_the_image_branch_and_per_frame_levels_change_the_output(tiny):
  """The comparisons above can fail: a different image, or another level on one frame, moves
  both implementations' outputs."""
  variant, model, module, variables = tiny
  cfg = module.cfg
  x, t, text, mask, image = _inputs(cfg, 3, per_frame_t=True)
  apply = lambda t, image: np.asarray(module.apply(
      variables, *map(jnp.asarray, (x, t, text, mask)),
      **({} if image is None else {"image_emb": jnp.asarray(image)})))
  base = apply(t, image)
  moved = t.copy()
  moved[:, 1] = 0.5 * moved[:, 1]
  assert np.abs(apply(moved, image)[:, 1] - base[:, 1]).max() > 1e-3
  if image is not None:
    other = np.random.default_rng(5).normal(size=image.shape).astype(np.float32)
    assert np.abs(apply(t, other) - base).max() > 1e-3


def test_bad_levels_and_image_inputs_are_refused_naming_the_argument(tiny):
  variant, _, module, variables = tiny
  cfg = module.cfg
  x, t, text, mask, image = _inputs(cfg, 4, per_frame_t=True)
  image_kw = {} if image is None else {"image_emb": jnp.asarray(image)}
  with pytest.raises(ValueError, match=r"t has shape \(2, 2\); expected \[B\] = \(2,\) or \[B, T\]"):
    module.apply(variables, *map(jnp.asarray, (x, t[:, :2], text, mask)), **image_kw)
  if image is None:
    with pytest.raises(ValueError, match="no image branch"):
      module.apply(variables, *map(jnp.asarray, (x, t, text, mask)),
                   image_emb=jnp.zeros((2, 7, 20)))
  else:
    with pytest.raises(ValueError, match="needs image_emb"):
      module.apply(variables, *map(jnp.asarray, (x, t, text, mask)))
    with pytest.raises(ValueError, match=r"image_emb has shape \(2, 7, 3\)"):
      module.apply(variables, *map(jnp.asarray, (x, t, text, mask)), image_emb=jnp.zeros((2, 7, 3)))


def test_the_folder_config_gives_the_shape_and_round_trips(tiny, tmp_path):
  variant, model, module, _ = tiny
  cfg = module.cfg
  assert cfg.in_channels == VARIANTS[variant]["in_channels"]
  assert cfg.latent_channels == VARIANTS[variant]["out_channels"]
  assert cfg.image_dim == VARIANTS[variant].get("image_dim", 0)
  written = wan_weights.diffusers_config(cfg)
  for key, value in {**TINY, **VARIANTS[variant]}.items():
    if key == "rope_max_seq_len":  # A table length (positions up to it), not a shape we keep.
      continue
    assert written[key] == (list(value) if isinstance(value, tuple) else value), key


def test_an_image_branch_without_its_projections_is_refused(tmp_path):
  config = {"_class_name": "WanTransformer3DModel", "num_attention_heads": 2,
            "attention_head_dim": 12, "num_layers": 2, "ffn_dim": 32, "in_channels": 36,
            "out_channels": 16, "image_dim": 20, "added_kv_proj_dim": 7}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config.json: added_kv_proj_dim=7 with image_dim=20"):
    wan_weights.read_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({**config, "added_kv_proj_dim": 24,
                                                    "pos_embed_seq_len": 514}))
  with pytest.raises(ValueError, match="pos_embed_seq_len=514 is not supported"):
    wan_weights.read_config(str(tmp_path))


# The published shapes, without weights: diffusers' model on the meta device from the published
# transformer/config.json values against our preset under the converter's mapping.
PUBLISHED = {  # preset: the published config's values beyond the shared ones.
    "wan2.1-t2v-1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": dict(),
    "wan2.1-i2v-14b": dict(in_channels=36, out_channels=16, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.2-ti2v-5b": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48,
                           out_channels=48),
    "wan2.2-t2v-a14b": dict(),
    "wan2.2-i2v-a14b": dict(in_channels=36, out_channels=16),
}
PUBLISHED_SHARED = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                        ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_configs_match_the_presets_key_for_key(preset):
  cfg = get_model_config("wan", preset)
  with torch.device("meta"):
    model = diffusers.WanTransformer3DModel(**{**PUBLISHED_SHARED, **PUBLISHED[preset]})
  state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  table = wan_weights.rules(cfg)
  assert set(state) == set(table)
  ours = {"/".join(k): v.shape for k, v in
          traverse_util.flatten_dict(nn.unbox(abstract_params(cfg))).items()}
  assert sorted(path for path, _ in table.values()) == sorted(ours)
  for key, (path, transform) in table.items():
    assert wan_weights.to_flax(np.empty(state[key], np.int8), transform).shape == ours[path], key
  assert sum(int(np.prod(s)) for s in state.values()) == sum(int(np.prod(s)) for s in ours.values())

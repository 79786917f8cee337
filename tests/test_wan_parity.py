"""Wan 2.1 against diffusers' `WanTransformer3DModel` (PyTorch): weights go torch -> safetensors ->
our converter -> Flax, so these tests exercise the real import and export paths. No download:
every model is built from a config. Needs the `[interop]` extra (torch, diffusers, peft)."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from densedpo_jax.training import train  # noqa: E402
from densedpo_jax.interop import convert_wan, export_diffusers  # noqa: E402
from densedpo_jax.model import wan_weights  # noqa: E402
from densedpo_jax.model import LoRAConfig, build, get_model_config, load_pretrained  # noqa: E402
from densedpo_jax.model import pretrained  # noqa: E402
from densedpo_jax.model.registry import abstract_params  # noqa: E402
from densedpo_jax.model.layers import rope_3d  # noqa: E402
from densedpo_jax.model.wan import WanBlock, WanConditionEmbedder  # noqa: E402
from tests.helpers import forward_gap_bound, gamma, tiny_config, write_pairs  # noqa: E402
from tests.tiny_wan import tiny_transformer  # noqa: E402

TEXT_LEN = 8
# diffusers' own tiny test config (tests/models/transformers/test_models_transformer_wan.py), and
# one with head dim 128, where RoPE splits 44 / 42 / 42.
CONFIGS = {
    "diffusers_tiny": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2),
    "head_dim_128": dict(num_attention_heads=2, attention_head_dim=128, ffn_dim=64, num_layers=2),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
  """`(torch model, its diffusers folder)`."""
  model = tiny_transformer(0, **CONFIGS[request.param])
  folder = str(tmp_path_factory.mktemp(request.param) / "transformer")
  model.save_pretrained(folder)
  return model, folder


def _fresh() -> int:
  """A fresh seed per test (the rules: draw fresh random inputs), shown if an assertion fails."""
  seed = int(np.random.randint(1 << 30))
  print(f"input seed {seed}")
  return seed


def _inputs(seed, b=2, f=3, h=4, w=6, l=5):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, l), bool)
  mask[1, 3:] = False
  return (rng.normal(size=(b, f, h, w, 16)).astype(np.float32),
          rng.uniform(0.01, 1, size=b).astype(np.float32),
          rng.normal(size=(b, l, 32)).astype(np.float32), mask)


def _torch_forward(model, x, t, text, mask, dtype=torch.float32):
  """The Wan pipeline's call: channels-first video, t * 1000, text zeroed and padded to 512 (here
  TEXT_LEN) tokens."""
  padded = np.pad(np.where(mask[..., None], text, 0), ((0, 0), (0, TEXT_LEN - text.shape[1]), (0, 0)))
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3).to(dtype), torch.from_numpy(t * 1000),
                torch.from_numpy(padded).to(dtype), return_dict=False)[0]
  return out.float().permute(0, 2, 3, 4, 1).numpy()


def _rel(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _parity_bound(depth: int) -> float:
  """Bound on `_rel` for float32 JAX against float32 PyTorch (other kernels, other orders) over
  `depth` blocks of reductions: the longest has the 256 timestep frequencies (width, ffn_dim and
  the tokens are shorter), and the timestep angles t * 1000 * f (|angle| <= 1000) round to
  1000 eps, which the embedder's reductions then carry like theirs."""
  return forward_gap_bound(1.0, depth, 256)


def test_rope_tables_equal_diffusers(tiny):
  model, folder = tiny
  hidden = torch.zeros(1, 16, 3, 8, 10)
  cos_ref, sin_ref = (r[0, :, 0].numpy() for r in model.rope(hidden))
  cos, sin = rope_3d((3, 4, 5), model.config.attention_head_dim)
  # diffusers repeats each angle for the two channels of its pair. An angle p * f (p <= 4 here,
  # f <= 1) rounds within a few eps of its size in each library, as do cos and sin.
  tol = 2 * gamma(4) * (4 + 1)
  np.testing.assert_allclose(np.repeat(cos, 2, -1), cos_ref, rtol=0, atol=tol)
  np.testing.assert_allclose(np.repeat(sin, 2, -1), sin_ref, rtol=0, atol=tol)


def test_condition_embedder_and_one_block_equal_diffusers(tiny):
  model, folder = tiny
  module, variables = load_pretrained(folder, text_len=TEXT_LEN)
  cfg, params = module.cfg, variables["params"]
  _, t, text, _ = _inputs(_fresh())
  temb, proj, context, _ = WanConditionEmbedder(cfg).apply(
      {"params": params["condition_embedder"]}, jnp.asarray(t), jnp.asarray(text))
  with torch.no_grad():
    temb_ref, proj_ref, ctx_ref, _ = model.condition_embedder(torch.from_numpy(t * 1000),
                                                              torch.from_numpy(text))
  assert _rel(temb, temb_ref.numpy()) < _parity_bound(1)
  assert _rel(proj, proj_ref.unflatten(1, (6, -1)).numpy()) < _parity_bound(1)
  assert _rel(context, ctx_ref.numpy()) < _parity_bound(1)

  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 60, cfg.width)).astype(np.float32)
  enc = rng.normal(size=(2, TEXT_LEN, cfg.width)).astype(np.float32)
  cos, sin = rope_3d((3, 4, 5), cfg.head_dim)
  out, _ = WanBlock(cfg).apply({"params": params["block_0"]}, jnp.asarray(x), proj[:, None],
                               jnp.asarray(enc), jnp.ones((2, TEXT_LEN), bool), cos, sin)
  with torch.no_grad():
    rotary = model.rope(torch.zeros(1, 16, 3, 8, 10))
    ref = model.blocks[0](torch.from_numpy(x), torch.from_numpy(enc), proj_ref.unflatten(1, (6, -1)),
                          rotary).numpy()
  assert _rel(out, ref) < _parity_bound(1)


def test_whole_model_equals_diffusers_in_float32(tiny):
  model, folder = tiny
  module, variables = load_pretrained(folder, text_len=TEXT_LEN)
  x, t, text, mask = _inputs(_fresh())
  ours = module.apply(variables, *map(jnp.asarray, (x, t, text, mask)))
  assert _rel(ours, _torch_forward(model, x, t, text, mask)) <= _parity_bound(
      module.cfg.depth)


def test_bfloat16_is_as_close_to_float32_as_diffusers_bfloat16(tiny):
  """bf16 keeps 8 significant bits (unit roundoff u = 2^-8), so neither implementation matches
  float32 to better than a few u after a few layers, and they round at different places. The
  tolerance: ours in bf16 is no further from the float32 output than diffusers' bf16 run (loaded
  with `torch_dtype=bfloat16`, which keeps its fp32 modules) is, up to a factor 2 plus one u."""
  model, folder = tiny
  x, t, text, mask = _inputs(_fresh())
  ref32 = _torch_forward(model, x, t, text, mask)
  model16 = diffusers.WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
  err_torch = _rel(_torch_forward(model16, x, t, text, mask, torch.bfloat16), ref32)
  module, variables = load_pretrained(folder, text_len=TEXT_LEN, dtype="bfloat16")
  ours = module.apply(variables, *map(jnp.asarray, (x, t, text, mask)))
  err_ours = _rel(np.asarray(ours, np.float32), ref32)
  assert 0 < err_ours <= 2 * err_torch + 2 ** -8, (err_ours, err_torch)


@pytest.mark.parametrize("preset,tensors", [("wan2.1-t2v-1.3b", 825), ("wan2.1-t2v-14b", 1095)])
def test_real_sizes_key_and_shape_lists_match_the_presets(preset, tensors):
  cfg = get_model_config("wan", preset)
  diffusers_cfg = {k: v for k, v in wan_weights.diffusers_config(cfg).items() if k != "_class_name"}
  with torch.device("meta"):
    model = diffusers.WanTransformer3DModel(**diffusers_cfg)
  state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert len(state) == tensors
  table = wan_weights.rules(cfg)
  assert set(state) == set(table)
  ours = {"/".join(k): v.shape for k, v in
          traverse_util.flatten_dict(nn.unbox(abstract_params(cfg))).items()}
  assert sorted(path for path, _ in table.values()) == sorted(ours)
  for key, (path, transform) in table.items():
    converted = wan_weights.to_flax(np.empty(state[key], np.int8), transform).shape
    assert converted == ours[path], key
  assert sum(int(np.prod(s)) for s in state.values()) == sum(int(np.prod(s)) for s in ours.values())


# Import, training and export end to end.

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny Wan converted with the CLI, DenseDPO-trained a few steps (rank 4, alpha 8: scale 2)."""
  root = tmp_path_factory.mktemp("trained")
  model = tiny_transformer(1, **CONFIGS["diffusers_tiny"])
  model.save_pretrained(str(root / "transformer"))
  convert_wan.main(["wan", str(root / "transformer"), str(root / "converted")])
  data = write_pairs(str(root / "pairs"), channels=16, text_dim=32)
  config = tiny_config("dense_dpo", data, total_steps=4, init_from=str(root / "converted"), **{
      "model.family": "wan", "model.preset": "wan2.1-t2v-1.3b", "model.width": 24,
      "model.depth": 2, "model.num_heads": 2, "model.ffn_dim": 32, "model.text_dim": 32,
      "model.text_len": TEXT_LEN, "lora.rank": 4, "lora.alpha": 8.0, "mesh.num_devices": 1})
  train.train_and_evaluate(config, str(root / "run"))
  return model, root


def test_converted_folder_equals_the_diffusers_folder(trained, tmp_path):
  _, root = trained
  _, direct = load_pretrained(str(root / "transformer"))
  _, converted = load_pretrained(str(root / "converted"))
  for a, b in zip(jax.tree_util.tree_leaves(direct), jax.tree_util.tree_leaves(converted)):
    np.testing.assert_array_equal(a, b)
  # Scanned layout and bf16 storage.
  convert_wan.main(["wan", str(root / "transformer"), str(tmp_path / "scanned"), "--scan_layers",
                "--dtype", "bfloat16"])
  with pytest.raises(FileExistsError, match="already holds params"):  # Never half-overwritten.
    convert_wan.main(["wan", str(root / "transformer"), str(tmp_path / "scanned")])
  module, scanned = load_pretrained(str(tmp_path / "scanned"))
  assert module.cfg.scan_layers and module.cfg.param_dtype == "bfloat16"
  assert scanned["params"]["blocks"]["attn1"]["to_q"]["kernel"].shape == (2, 24, 24)
  assert scanned["params"]["blocks"]["attn1"]["to_q"]["kernel"].dtype == jnp.bfloat16


def test_the_model_shape_comes_from_the_weights_and_layouts_convert_on_load(trained, tmp_path):
  """The 1.3B recipe pointed at a tiny folder runs the folder's model with the recipe's own
  dtype, layout and attention; no --config.model.* shape override is needed, a wrong one is named."""
  from configs import dense, pretrain
  from densedpo_jax.model.layout import stack_blocks, unstack_blocks
  from densedpo_jax.training.builders import model_config, with_overrides
  _, root = trained
  recipe = with_overrides(dense.get_config("wan1.3b"), init_from=str(root / "transformer"))
  cfg = model_config(recipe)
  assert (cfg.width, cfg.depth, cfg.num_heads, cfg.ffn_dim, cfg.text_dim) == (24, 2, 2, 32, 32)
  folder = wan_weights.read_config(str(root / "transformer"))  # The recipe's run fields, not these.
  assert (cfg.scan_layers, cfg.dtype) == (True, "bfloat16") != (folder.scan_layers, folder.dtype)
  # The recipe names cuDNN attention; off a GPU the portable kernel runs, with one warning line.
  on_gpu = jax.devices()[0].platform == "gpu"
  assert cfg.attention_impl == ("cudnn" if on_gpu else "blockwise")
  assert model_config(recipe, portable_attention=False).attention_impl == "cudnn"
  assert model_config(with_overrides(recipe, init_from=str(root / "converted"))).width == 24
  with pytest.raises(ValueError, match=r"config\.model\.ffn_dim=64, but the weights in "
                                       r".*transformer have ffn_dim=32: drop the override"):
    model_config(with_overrides(recipe, **{"model.ffn_dim": 64}))
  with pytest.raises(ValueError, match=r"config\.model\.family='dit', but init_from=.* holds a "
                                       r"'wan' model"):
    model_config(with_overrides(pretrain.get_config("quick"), init_from=str(root / "converted")))
  # A looped params directory read into a scanned model, and a scanned one into a looped model.
  looped_cfg = cfg.replace(scan_layers=False, dtype="float32", attention_impl="xla")
  looped = pretrained.read_params_on_device(str(root / "converted"), looped_cfg)
  scanned = pretrained.read_params_on_device(str(root / "converted"), looped_cfg.replace(scan_layers=True))
  for a, b in zip(jax.tree_util.tree_leaves(stack_blocks(looped, 2)), jax.tree_util.tree_leaves(scanned)):
    np.testing.assert_array_equal(a, b)
  convert_wan.main(["wan", str(root / "transformer"), str(tmp_path / "scanned"), "--scan_layers"])
  back = pretrained.read_params_on_device(str(tmp_path / "scanned"), looped_cfg)
  for a, b in zip(jax.tree_util.tree_leaves(unstack_blocks(scanned, 2)), jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(a, b)


def test_lora_adapter_off_is_the_base_and_exported_adapter_loads_in_diffusers(trained, tmp_path):
  model, root = trained
  module, base = load_pretrained(str(root / "converted"), text_len=TEXT_LEN)
  _, state = pretrained.read_item(str(root / "run"), "state")
  lora_cfg = module.cfg.replace(lora=LoRAConfig(rank=4, alpha=8.0))
  variables = {"params": base["params"], "lora": state["trainable"]}
  x, t, text, mask = _inputs(_fresh())
  inputs = tuple(map(jnp.asarray, (x, t, text, mask)))
  off = build(lora_cfg).apply(variables, *inputs, lora_enabled=False)
  np.testing.assert_array_equal(off, module.apply(base, *inputs))
  ours = build(lora_cfg).apply(variables, *inputs)
  assert _rel(ours, np.asarray(off)) > 1e-3  # The adapter trained.

  file = str(tmp_path / "adapter.safetensors")
  summary = export_diffusers.export_lora(str(root / "run"), file)
  assert summary["tensors"] == 2 * 2 * 10  # lora_A and lora_B, 2 blocks, 10 targets.
  assert _rel(ours, _with_lora_file(model, file, x, t, text, mask)) <= 1e-4


def _with_lora_file(model, file, x, t, text, mask):
  """The torch model's output with the LoRA file loaded by diffusers' `load_lora_weights`."""
  pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                               transformer=model)
  pipe.load_lora_weights(file)
  try:
    return _torch_forward(pipe.transformer, x, t, text, mask)
  finally:
    pipe.unload_lora_weights()


def test_comfyui_layout_export_loads_through_diffusers_own_converter(trained, tmp_path):
  """The original-Wan-key file (ComfyUI, musubi-tuner) read by an independent reader: diffusers'
  converter for non-diffusers Wan LoRAs, inside `load_lora_weights`."""
  from safetensors.numpy import load_file
  model, root = trained
  file = str(tmp_path / "comfyui.safetensors")
  summary = export_diffusers.export_lora(str(root / "run"), file, layout="wan")
  tensors = load_file(file)
  modules = [f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
  assert set(tensors) == {f"diffusion_model.blocks.{i}.{m}.{part}" for i in range(2)
                          for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
  assert summary["tensors"] == 2 * 10 * 3
  assert tensors["diffusion_model.blocks.1.ffn.0.lora_down.weight"].shape == (4, 24)  # [r, in]
  assert tensors["diffusion_model.blocks.1.ffn.0.lora_up.weight"].shape == (32, 4)  # [out, r]
  assert float(tensors["diffusion_model.blocks.0.self_attn.q.alpha"]) == 8.0
  module, base = load_pretrained(str(root / "converted"), text_len=TEXT_LEN)
  _, state = pretrained.read_item(str(root / "run"), "state")
  lora_cfg = module.cfg.replace(lora=LoRAConfig(rank=4, alpha=8.0))
  x, t, text, mask = _inputs(_fresh())
  ours = build(lora_cfg).apply({"params": base["params"], "lora": state["trainable"]},
                               *map(jnp.asarray, (x, t, text, mask)))
  assert _rel(ours, _with_lora_file(model, file, x, t, text, mask)) <= 1e-4


def test_merged_export_loads_in_diffusers(trained, tmp_path):
  _, root = trained
  summary = export_diffusers.export_merged(str(root / "run"), str(tmp_path / "merged"),
                                           max_shard_bytes=40_000)
  assert summary["files"] > 1  # Sharded, with an index.
  merged = diffusers.WanTransformer3DModel.from_pretrained(str(tmp_path / "merged")).eval()
  module, exported = load_pretrained(str(root / "run"), text_len=TEXT_LEN)
  x, t, text, mask = _inputs(_fresh())
  ours = module.apply(exported, *map(jnp.asarray, (x, t, text, mask)))
  assert _rel(ours, _torch_forward(merged, x, t, text, mask)) <= _parity_bound(
      module.cfg.depth)


def test_export_of_a_videodit_run_is_refused(tmp_path):
  from densedpo_jax.model import pretrained
  pretrained.write_model_json(str(tmp_path), get_model_config("dit", "tiny"))
  with pytest.raises(ValueError, match="only Wan 2.1"):
    export_diffusers.export_lora(str(tmp_path), str(tmp_path / "x.safetensors"))


# Bad input.

def test_truncated_or_foreign_folders_fail_naming_the_file_and_key(tmp_path):
  model = tiny_transformer(0, **CONFIGS["diffusers_tiny"])
  folder = tmp_path / "t"
  model.save_pretrained(str(folder))
  file = folder / "diffusion_pytorch_model.safetensors"
  cfg = wan_weights.read_config(str(folder))
  from safetensors.torch import load_file, save_file
  state = load_file(str(file))

  def write(tensors):
    save_file(tensors, str(file))

  write({k: v for k, v in state.items() if k != "blocks.1.ffn.net.2.weight"})
  with pytest.raises(ValueError, match=r"missing.*blocks\.1\.ffn\.net\.2\.weight.*block_1/ffn/net_2/kernel"):
    wan_weights.load_diffusers(str(folder), cfg)
  write({**state, "blocks.0.attn2.add_k_proj.weight": torch.zeros(24, 24)})
  with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors.*unexpected.*add_k_proj"):
    wan_weights.load_diffusers(str(folder), cfg)
  write({**state, "proj_out.weight": torch.zeros(63, 24)})
  with pytest.raises(ValueError, match=r"proj_out\.weight.*\(63, 24\).*\(24, 64\)"):
    wan_weights.load_diffusers(str(folder), cfg)
  # A header that declares a float32 tensor as I32 (same width, so safetensors accepts it).
  write(state)
  data = bytearray(file.read_bytes())
  size = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + size])
  key = sorted(k for k in header if k != "__metadata__")[0]
  assert header[key]["dtype"] == "F32"
  header[key]["dtype"] = "I32"
  text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
  assert len(text) == size
  file.write_bytes(data[:8] + text + data[8 + size:])
  with pytest.raises(ValueError, match=rf"diffusion_pytorch_model\.safetensors: tensor '{re.escape(key)}' "
                                       r"is stored as int32; weights must be one of"):
    wan_weights.load_diffusers(str(folder), cfg)
  write(state)
  data = file.read_bytes()
  file.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors.*truncated or corrupt"):
    wan_weights.load_diffusers(str(folder), cfg)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
  with pytest.raises(ValueError, match=r"config\.json.*UNet2DConditionModel"):
    load_pretrained(str(folder))
  (folder / "config.json").write_text(json.dumps({**config, "image_dim": 1280}))
  with pytest.raises(ValueError, match="image_dim"):
    wan_weights.read_config(str(folder))

"""Two-expert (Wan 2.2 A14B) pipelines: the expert chosen on each side of the boundary, and a
short sampling loop equal to diffusers' `WanPipeline` loop on the same latents and timesteps.
The folder is a tiny A14B-layout pipeline written by diffusers (tests/tiny_wan.py)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from densedpo_jax.model import build, experts, get_model_config, pretrained  # noqa: E402
from densedpo_jax.objectives import flow, sampling  # noqa: E402
from densedpo_jax.training.builders import training_weights, with_overrides  # noqa: E402
from configs import common  # noqa: E402
from tests.helpers import forward_gap_bound, gamma  # noqa: E402
from tests.tiny_wan import TEXT_DIM, build_a14b_folder  # noqa: E402

BOUNDARY = 0.875
TEXT_LEN = 512  # The pipeline's prompt length (ours pads to the same).


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
  """`(folder, diffusers pipeline, our plain module, ExpertParams)`."""
  root = build_a14b_folder(str(tmp_path_factory.mktemp("a14b")), boundary_ratio=BOUNDARY)
  pipe = diffusers.WanPipeline.from_pretrained(root)
  cfg = pretrained.weights_config(root)
  params = sampling.load_exported_params(root, cfg)
  return root, pipe, build(cfg), params


def _text(seed, b=2):
  rng = np.random.default_rng(seed)
  text = rng.normal(size=(b, TEXT_LEN, TEXT_DIM)).astype(np.float32)
  text[:, 6:] = 0  # A short prompt, zero-padded as the pipeline pads it.
  mask = np.zeros((b, TEXT_LEN), bool)
  mask[:, :6] = True
  return text, mask


def _rel(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_the_pipeline_folder_reads_as_two_experts(a14b):
  root, _, _, params = a14b
  assert isinstance(params, experts.ExpertParams) and params.boundary_ratio == BOUNDARY
  pipeline = experts.read_pipeline(root)
  assert pipeline.transformers == {"high": os.path.join(root, "transformer"),
                                   "low": os.path.join(root, "transformer_2")}


@pytest.mark.parametrize("level,expert", [(0.95, "transformer"), (0.875, "transformer"),
                                          (0.87, "transformer_2"), (0.3, "transformer_2")])
def test_the_expert_of_each_side_of_the_boundary_is_diffusers_choice(a14b, level, expert):
  """At t * 1000 >= 875 diffusers runs `transformer`, below `transformer_2`: the routed velocity
  equals that model's output and not the other's."""
  _, pipe, module, params = a14b
  rng = np.random.default_rng(int(np.random.randint(1 << 30)))
  x = rng.normal(size=(2, 2, 4, 6, 16)).astype(np.float32)
  text, mask = _text(1)
  t = np.full((2,), level, np.float32)
  v = sampling.velocity_fn(module, params)(*map(jnp.asarray, (x, t, text, mask)))
  outputs = {}
  for name in ("transformer", "transformer_2"):
    with torch.no_grad():
      out = getattr(pipe, name)(torch.from_numpy(x).permute(0, 4, 1, 2, 3),
                                torch.from_numpy(t * 1000), torch.from_numpy(text),
                                return_dict=False)[0]
    outputs[name] = out.permute(0, 2, 3, 4, 1).numpy()
  bound = forward_gap_bound(1.0, module.cfg.depth, TEXT_LEN)
  assert _rel(v, outputs[expert]) <= bound
  other = "transformer_2" if expert == "transformer" else "transformer"
  assert _rel(v, outputs[other]) > 100 * bound


def test_a_mixed_batch_runs_each_sample_on_its_own_expert(a14b):
  _, _, module, params = a14b
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 2, 4, 6, 16)).astype(np.float32))
  text, mask = map(jnp.asarray, _text(2))
  t = jnp.asarray([0.9, 0.5], jnp.float32)
  mixed = sampling.velocity_fn(module, params)(x, t, text, mask)
  high = module.apply({"params": params.high}, x, t, text, mask)
  low = module.apply({"params": params.low}, x, t, text, mask)
  bound = forward_gap_bound(1.0, module.cfg.depth, TEXT_LEN)  # Other fusions, same math.
  assert _rel(mixed[0], np.asarray(high[0])) <= bound < _rel(mixed[0], np.asarray(low[0])) / 100
  assert _rel(mixed[1], np.asarray(low[1])) <= bound < _rel(mixed[1], np.asarray(high[1])) / 100


def test_both_experts_as_one_module_run_each_sample_on_diffusers_choice(a14b):
  """`TwoExperts` (config.expert='both'): a mixed batch, each sample against the diffusers
  transformer of its level (an independent reader of the same weights)."""
  _, pipe, module, params = a14b
  both = experts.TwoExperts(module.cfg, BOUNDARY)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 2, 4, 6, 16)).astype(np.float32)
  text, mask = _text(3, b=3)
  t = np.asarray([0.95, 0.4, 0.875], np.float32)
  variables = {"params": {"high": params.high, "low": params.low}}
  v = np.asarray(both.apply(variables, *map(jnp.asarray, (x, t, text, mask))))
  bound = forward_gap_bound(1.0, module.cfg.depth, TEXT_LEN)
  for i, name in enumerate(("transformer", "transformer_2", "transformer")):
    with torch.no_grad():
      want = getattr(pipe, name)(torch.from_numpy(x[i:i + 1]).permute(0, 4, 1, 2, 3),
                                 torch.from_numpy(t[i:i + 1] * 1000),
                                 torch.from_numpy(text[i:i + 1]), return_dict=False)[0]
    assert _rel(v[i:i + 1], want.permute(0, 2, 3, 4, 1).numpy()) <= bound


def test_each_adapter_of_a_both_expert_module_learns_only_from_its_samples(a14b):
  """Gradients of a loss over samples on one side of the boundary reach only that expert's
  adapter (exactly zero on the other); a mixed batch reaches both."""
  from densedpo_jax.model import LoRAConfig
  _, _, module, params = a14b
  both = experts.TwoExperts(module.cfg.replace(lora=LoRAConfig(rank=2, alpha=2.0)), BOUNDARY)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 2, 4, 6, 16)).astype(np.float32))
  text, mask = map(jnp.asarray, _text(4))
  lora = both.init(jax.random.key(0), x, jnp.full((2,), 0.5), text, mask)["lora"]
  # lora_b starts at zero, where lora_a gets no gradient: move it off zero.
  lora = jax.tree_util.tree_map(lambda a: a + 0.01, lora)
  frozen = {"high": params.high, "low": params.low}

  def grad_max(levels):
    loss = lambda l: jnp.sum(both.apply({"params": frozen, "lora": l}, x,
                                        jnp.asarray(levels, jnp.float32), text, mask) ** 2)
    g = jax.grad(loss)(lora)
    return {e: max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g[e]))
            for e in ("high", "low")}
  high, low, mixed = grad_max([0.95, 0.9]), grad_max([0.3, 0.5]), grad_max([0.95, 0.3])
  assert high["low"] == 0.0 < high["high"]
  assert low["high"] == 0.0 < low["low"]
  assert mixed["high"] > 0 and mixed["low"] > 0


def test_a_sampling_loop_equals_the_diffusers_pipeline_loop(a14b):
  """Euler steps on the pipeline scheduler's own sigmas, from the same latents, with no CFG:
  diffusers switches from `transformer` to `transformer_2` mid-trajectory, and so do we."""
  _, pipe, module, params = a14b
  num_steps = 6
  pipe.scheduler.set_timesteps(num_steps)
  sigmas = pipe.scheduler.sigmas.numpy().astype(np.float32)
  assert (sigmas[:-1] >= BOUNDARY).any() and (sigmas[:-1] < BOUNDARY).any()  # Both experts run.
  assert np.abs(sigmas - BOUNDARY).min() > 1e-3  # No step on the edge of the switch.
  rng = np.random.default_rng(int(np.random.randint(1 << 30)))
  latents = rng.normal(size=(2, 16, 2, 4, 6)).astype(np.float32)
  text, mask = _text(3)
  with torch.no_grad():
    ref = pipe(prompt_embeds=torch.from_numpy(text), num_frames=5, height=32, width=48,
               num_inference_steps=num_steps, guidance_scale=1.0,
               latents=torch.from_numpy(latents), output_type="latent").frames
  ref = ref.float().permute(0, 2, 3, 4, 1).numpy()
  ours = jax.jit(lambda p, x: flow.euler_integrate(
      sampling.velocity_fn(module, p), x, sigmas, jnp.asarray(text), jnp.asarray(mask)))(
          params, jnp.asarray(latents.transpose(0, 2, 3, 4, 1)))
  # Each velocity differs by at most the forward bound (relative to its scale, about that of x);
  # Euler's steps sum |dt| = 1 of them, and an error already in x grows at most e^L over the run
  # (L <= 1 for these LayerNorm'd tiny models, as in tests/helpers.euler_gap_bound); each step
  # also rounds x + dt v a few times.
  bound = forward_gap_bound(1.0, module.cfg.depth, TEXT_LEN) * np.e + 2 * num_steps * gamma(4)
  assert _rel(ours, ref) <= bound


def test_a_folder_with_one_expert_missing_or_no_boundary_is_named(a14b, tmp_path):
  root = a14b[0]
  broken = tmp_path / "broken"
  shutil.copytree(root, broken)
  shutil.rmtree(broken / "transformer_2")
  with pytest.raises(FileNotFoundError, match=r"broken/transformer_2: missing \(model_index.json "
                                              r"lists transformer_2"):
    experts.read_pipeline(str(broken))
  shutil.copytree(f"{root}/transformer_2", broken / "transformer_2")
  index = json.loads((broken / "model_index.json").read_text())
  (broken / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": None}))
  with pytest.raises(ValueError, match="model_index.json: transformer_2 is listed and "
                                       "boundary_ratio is None"):
    experts.read_pipeline(str(broken))


def test_training_adapts_one_expert_on_its_own_noise_levels(a14b):
  root = a14b[0]
  config = with_overrides(common.base(), init_from=root)
  with pytest.raises(ValueError, match=r"holds two experts .* set config.expert='high' or 'low'"):
    training_weights(config)
  high = training_weights(with_overrides(config, expert="high"))
  assert high.init_from == os.path.join(root, "transformer")
  assert tuple(high.t_sampler.range) == (BOUNDARY, 1.0)
  low = training_weights(with_overrides(config, expert="low"))
  assert low.init_from == os.path.join(root, "transformer_2")
  assert tuple(low.t_sampler.range) == (0.0, BOUNDARY)
  with pytest.raises(ValueError, match=r"t_sampler.range=\(0.5, 0.95\), but the 'low' expert"):
    training_weights(with_overrides(config, expert="low", **{"t_sampler.range": (0.5, 0.95)}))
  both = training_weights(with_overrides(config, expert="both"))
  assert both.init_from == os.path.join(root, "transformer")  # The shape; each base is read.
  assert both.t_sampler.boundary == BOUNDARY and tuple(both.t_sampler.range) == (0.0, 1.0)
  with pytest.raises(ValueError, match=r"expert='both': both experts draw their own ranges"):
    training_weights(with_overrides(config, expert="both", **{"t_sampler.range": (0.5, 0.95)}))
  with pytest.raises(ValueError, match="config.expert='mid'"):
    training_weights(with_overrides(config, expert="mid"))
  one = with_overrides(config, init_from=os.path.join(root, "transformer"), expert="low")
  with pytest.raises(ValueError, match="is not a two-expert pipeline folder"):
    training_weights(one)


def test_the_experts_presets_match_the_folder_shape(a14b):
  cfg = pretrained.weights_config(a14b[0])
  assert (cfg.width, cfg.depth, cfg.in_channels) == (24, 2, 16)
  assert get_model_config("wan", "wan2.2-t2v-a14b").in_channels == cfg.in_channels


# One expert adapted by DenseDPO, exported, and loaded into the diffusers pipeline.

def _expert_run(root, workdir, expert, data):
  from densedpo_jax.training import train
  from tests.helpers import tiny_config
  # With expert='both' half of the pairs are drawn above the boundary (t_sampler.high_share):
  # in 3 steps of 8 pairs both experts see some (P(none) = 2 x 0.5^24).
  config = tiny_config("dense_dpo", data, total_steps=3, init_from=root, expert=expert, **{
      "model.family": "wan", "model.preset": "wan2.2-t2v-a14b", "model.width": 24,
      "model.depth": 2, "model.num_heads": 2, "model.ffn_dim": 32, "model.text_dim": TEXT_DIM,
      "lora.rank": 4, "lora.alpha": 8.0, "mesh.num_devices": 1})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def runs(a14b, tmp_path_factory):
  """`{expert: workdir}` of a DenseDPO run on each expert of the tiny A14B pipeline, and one
  ('both') adapting the two."""
  from tests.helpers import write_pairs
  work = tmp_path_factory.mktemp("expert_runs")
  data = write_pairs(str(work / "pairs"), channels=16, text_dim=TEXT_DIM)
  return {e: _expert_run(a14b[0], str(work / e), e, data) for e in ("high", "low", "both")}


def test_each_run_records_its_expert_and_adapts_only_it(a14b, runs):
  root = a14b[0]
  for expert in ("high", "low"):
    workdir = runs[expert]
    record = experts.read_run_expert(workdir)
    assert record["expert"] == expert and record["boundary_ratio"] == BOUNDARY
    assert record["t_range"] == ([BOUNDARY, 1.0] if expert == "high" else [0.0, BOUNDARY])
    _, adapted = pretrained.load_pretrained(workdir)
    _, base = pretrained.load_pretrained(f"{root}/{experts.EXPERTS[expert]}")
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                   adapted, base)
    assert max(jax.tree_util.tree_leaves(moved)) > 0  # The adapter moved this expert's weights.


@pytest.mark.parametrize("fmt", ["diffusers-lora", "comfyui-lora"])
def test_the_low_expert_adapter_loads_into_transformer_2(a14b, runs, tmp_path, fmt):
  """Exported in either layout, the low-noise expert's adapter loads into diffusers'
  `transformer_2` (`load_into_transformer_2=True`) and gives the run's own merged output there,
  while `transformer` stays the base high-noise expert."""
  from densedpo_jax.interop import export_diffusers
  root, _, _, _ = a14b
  out = str(tmp_path / "low.safetensors")
  export_diffusers.main(["--workdir", runs["low"], "--format", fmt, "--out", out])
  pipe = diffusers.WanPipeline.from_pretrained(root)
  before_high = _diffusers_v(pipe.transformer, 0.95)
  pipe.load_lora_weights(out, load_into_transformer_2=True)
  module, adapted = pretrained.load_pretrained(runs["low"])
  x, t, text, mask = _fixed_inputs(0.4)
  ours = module.apply(adapted, *map(jnp.asarray, (x, t, text, mask)))
  assert _rel(ours, _diffusers_v(pipe.transformer_2, 0.4)) <= 1e-4
  np.testing.assert_array_equal(_diffusers_v(pipe.transformer, 0.95), before_high)


def test_two_expert_runs_sample_as_one_model(a14b, runs):
  """`HIGH_RUN+LOW_RUN` (as config.evaluate.models and init_from take it) is the adapted A14B
  model: each step runs the adapted expert of its level."""
  _, _, module, _ = a14b
  pair = f"{runs['low']}+{runs['high']}"
  cfg = pretrained.weights_config(pair)
  params = sampling.load_exported_params(pair, cfg)
  assert isinstance(params, experts.ExpertParams) and params.boundary_ratio == BOUNDARY
  x, _, text, mask = map(jnp.asarray, _fixed_inputs(0.5))
  velocity = sampling.velocity_fn(module, params)
  for level, run in ((0.95, "high"), (0.4, "low")):
    t = jnp.full((2,), level)
    _, own = pretrained.load_pretrained(runs[run])
    want = np.asarray(module.apply(own, x, t, text, mask))
    assert _rel(velocity(x, t, text, mask), want) <= forward_gap_bound(1.0, 2, TEXT_LEN)
  with pytest.raises(ValueError, match="expected one 'high' and one 'low' expert run"):
    experts.run_pair(f"{runs['low']}+{runs['low']}")


def test_one_run_adapts_both_experts(a14b, runs):
  """config.expert='both': the run records it, draws every level, moves both experts' weights,
  and loads as one routed model (`load_pretrained`, sampling)."""
  root, _, module, _ = a14b
  workdir = runs["both"]
  record = experts.read_run_expert(workdir)
  assert record["expert"] == "both" and record["t_range"] == [0.0, 1.0]
  assert record["transformer"] == ["transformer", "transformer_2"]
  routed, adapted = pretrained.load_pretrained(workdir)
  assert isinstance(routed, experts.TwoExperts) and routed.boundary_ratio == BOUNDARY
  for expert, folder in experts.EXPERTS.items():
    _, base = pretrained.load_pretrained(f"{root}/{folder}")
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                   adapted["params"][expert], base["params"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0, expert
  params = sampling.load_exported_params(workdir, pretrained.weights_config(workdir))
  assert isinstance(params, experts.ExpertParams) and params.boundary_ratio == BOUNDARY
  x, _, text, mask = map(jnp.asarray, _fixed_inputs(0.5))
  for level, expert in ((0.95, "high"), (0.4, "low")):
    t = jnp.full((2,), level)
    want = np.asarray(module.apply({"params": adapted["params"][expert]}, x, t, text, mask))
    got = sampling.velocity_fn(module, params)(x, t, text, mask)
    assert _rel(got, want) <= forward_gap_bound(1.0, 2, TEXT_LEN)
    assert _rel(routed.apply(adapted, x, t, text, mask), want) <= forward_gap_bound(1.0, 2, TEXT_LEN)


@pytest.mark.parametrize("expert", ["high", "low"])
def test_a_both_expert_run_exports_each_adapter_to_its_transformer(a14b, runs, tmp_path, expert):
  """`export --expert=E` of a 'both' run: the file loads into E's diffusers transformer and gives
  the run's own merged output of E there; without --expert the export says to pick one."""
  from densedpo_jax.interop import export_diffusers
  root = a14b[0]
  out = str(tmp_path / f"{expert}.safetensors")
  with pytest.raises(ValueError, match=r"adapted both experts: pass --expert=high or --expert=low"):
    export_diffusers.main(["--workdir", runs["both"], "--format", "diffusers-lora", "--out", out])
  export_diffusers.main(["--workdir", runs["both"], "--format", "diffusers-lora", "--out", out,
                         "--expert", expert])
  pipe = diffusers.WanPipeline.from_pretrained(root)
  pipe.load_lora_weights(out, load_into_transformer_2=expert == "low")
  routed, adapted = pretrained.load_pretrained(runs["both"])
  level = 0.95 if expert == "high" else 0.4
  x, t, text, mask = _fixed_inputs(level)
  ours = routed.apply(adapted, *map(jnp.asarray, (x, t, text, mask)))
  theirs = _diffusers_v(pipe.transformer if expert == "high" else pipe.transformer_2, level)
  assert _rel(ours, theirs) <= 1e-4
  with pytest.raises(ValueError, match=r"--expert=low, but .* adapted the high-noise expert"):
    export_diffusers.export_lora(runs["high"], out, expert="low")


def _fixed_inputs(level):
  rng = np.random.default_rng(7)
  text, mask = _text(7)
  return (rng.normal(size=(2, 2, 4, 6, 16)).astype(np.float32),
          np.full((2,), level, np.float32), text, mask)


def _diffusers_v(transformer, level):
  x, t, text, _ = _fixed_inputs(level)
  with torch.no_grad():
    out = transformer(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t * 1000),
                      torch.from_numpy(text), return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()


def test_a_converted_pipeline_reads_as_the_pipeline(a14b, tmp_path):
  """`convert wan PIPELINE DST` converts both experts and keeps the boundary: DST samples and
  trains as the diffusers folder does, with the same weights."""
  from densedpo_jax.interop import convert_wan
  root, _, _, params = a14b
  convert_wan.main(["wan", root, str(tmp_path / "converted")])
  converted = str(tmp_path / "converted")
  cfg = pretrained.weights_config(converted)
  again = sampling.load_exported_params(converted, cfg)
  assert again.boundary_ratio == BOUNDARY
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(a, b)
  config = with_overrides(common.base(), init_from=converted, expert="low")
  assert training_weights(config).init_from == os.path.join(converted, "transformer_2")
  with pytest.raises(ValueError, match=r"holds two experts: load .*transformer \(high noise\)"):
    pretrained.load_pretrained(root)

"""Two-expert models (Wan 2.2 A14B): a high-noise and a low-noise transformer, switched by the
noise level exactly as diffusers' `WanPipeline` / `WanImageToVideoPipeline` switch them.

A diffusers pipeline folder names its parts in `model_index.json`; an A14B folder has two
transformers and a `boundary_ratio` (0.875 for T2V-A14B, 0.9 for I2V-A14B):

    model_index.json   {"boundary_ratio": 0.875, "transformer": [...], "transformer_2": [...]}
    transformer/       the high-noise expert: runs where t * 1000 >= boundary_ratio * 1000
    transformer_2/     the low-noise expert: everywhere below

Sampling routes every step to its expert (`routed_velocity`). Training adapts one expert a run
by default (`config.expert='high'` or `'low'`), with its noise levels drawn only from that
expert's range (`t_range`): each expert is a whole 14B network, so one run per expert holds one
base model in memory, and each adapter learns only from the levels its expert sees when
sampling. `config.expert='both'` adapts the two in one run (`TwoExperts`): t is drawn per pair
over the whole range and each pair runs on its expert; it holds both bases, and a micro-batch
whose pairs fall on both sides of the boundary runs both experts.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from densedpo_jax import distributed  # Paths through epath: local folders and gs:// alike.

MODEL_INDEX = "model_index.json"
EXPERTS = {"high": "transformer", "low": "transformer_2"}  # Expert name -> pipeline folder.
BOTH = "both"  # config.expert adapting the two experts in one run.
NUM_TRAIN_TIMESTEPS = 1000  # The Wan schedulers' `num_train_timesteps`: the network sees t * 1000.


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """A diffusers pipeline folder: its transformer folder(s) and, for two experts, the boundary."""
  root: str
  transformers: dict[str, str]  # 'high' (or the only one) and 'low' -> transformer folders.
  boundary_ratio: float | None = None

  @property
  def two_experts(self) -> bool:
    return self.boundary_ratio is not None


def read_pipeline(path: str) -> Pipeline | None:
  """The pipeline folder at `path`, or None when `path` has no `model_index.json`.

  Errors (naming the file and what was expected): a `boundary_ratio` outside (0, 1), a
  transformer the index lists but the folder lacks, `transformer_2` without a boundary or the
  reverse.
  """
  root = distributed.path(path)
  index_file = root / MODEL_INDEX
  if not index_file.is_file():
    return None
  try:
    index = json.loads(index_file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{index_file}: cannot read the pipeline index: {e}") from e
  listed = lambda name: isinstance(index.get(name), list) and index[name][0] is not None
  boundary = index.get("boundary_ratio")
  if listed("transformer_2") != (boundary is not None):
    raise ValueError(f"{index_file}: transformer_2 is {'' if listed('transformer_2') else 'not '}"
                     f"listed and boundary_ratio is {boundary!r}; a two-expert (Wan 2.2 A14B) "
                     "pipeline has both, a one-transformer pipeline neither")
  if boundary is not None and not 0.0 < float(boundary) < 1.0:
    raise ValueError(f"{index_file}: boundary_ratio={boundary!r}; expected a number in (0, 1)")
  names = ("high", "low") if boundary is not None else ("high",)
  transformers = {}
  for name in names:
    folder = root / EXPERTS[name]
    if not any((folder / f).is_file() for f in ("config.json", "model.json")):
      raise FileNotFoundError(f"{folder}: missing ({MODEL_INDEX} lists {EXPERTS[name]}; "
                              "the folder with its config.json (or a converted one's "
                              "model.json) and weights is not there)")
    transformers[name] = str(folder)
  return Pipeline(str(root), transformers, None if boundary is None else float(boundary))


def weights_folder(path: str, expert: str = "") -> str:
  """The transformer folder that `config.init_from=path` means for a run adapting `expert`
  ('' for a one-transformer model; 'high', 'low' or 'both' for an A14B pipeline: 'both' gives
  the high-noise folder, the two share one shape). Paths that are not pipeline folders are
  returned as they are."""
  if expert and expert not in (*EXPERTS, BOTH):
    raise ValueError(f"config.expert={expert!r}; expected '' (one transformer), 'high', 'low' or "
                     "'both'")
  pipeline = read_pipeline(path) if path else None
  if pipeline is None:
    if expert:
      raise ValueError(f"config.expert={expert!r}, but init_from={path!r} is not a two-expert "
                       f"pipeline folder (one with {MODEL_INDEX}, transformer/ and "
                       "transformer_2/)")
    return path
  if pipeline.two_experts and not expert:
    raise ValueError(f"init_from={path} holds two experts (boundary_ratio "
                     f"{pipeline.boundary_ratio}): set config.expert='high' or 'low' to adapt one "
                     "of them (one run per expert), or 'both' to adapt the two in one run")
  if expert and not pipeline.two_experts:
    raise ValueError(f"config.expert={expert!r}, but {path} has one transformer")
  return pipeline.transformers["high" if expert in ("", BOTH) else expert]


RUN_EXPERT_JSON = "expert.json"  # In a run's workdir: which expert of which pipeline it adapted.


def run_record(pipeline_root: str, expert: str, t_range: tuple[float, float]) -> dict[str, Any]:
  """What a run adapting one expert (or both) writes as `<workdir>/expert.json`."""
  pipeline = read_pipeline(pipeline_root)
  transformer = list(EXPERTS.values()) if expert == BOTH else EXPERTS[expert]
  return {"expert": expert, "pipeline": str(distributed.path(pipeline_root)),
          "transformer": transformer, "boundary_ratio": pipeline.boundary_ratio,
          "t_range": list(t_range)}


def read_run_expert(workdir: str) -> dict[str, Any] | None:
  """The `expert.json` of a run (None for a run of a one-transformer model)."""
  file = distributed.path(workdir) / RUN_EXPERT_JSON
  return json.loads(file.read_text()) if file.is_file() else None


def both_run_boundary(path: str) -> float | None:
  """The `boundary_ratio` of a run that adapted both experts (`config.expert='both'`), whose
  params nest per expert (`TwoExperts`); None for any other path."""
  pair = path and "+" in path and not distributed.path(path).exists()  # HIGH_RUN+LOW_RUN.
  record = read_run_expert(path) if path and not pair else None
  return record["boundary_ratio"] if record and record["expert"] == BOTH else None


def run_pair(path: str) -> tuple[str, str, float] | None:
  """`(high run, low run, boundary_ratio)` of a model named `RUN_A+RUN_B` (the two runs that
  adapted the two experts of one pipeline, in either order), or None for any other path. Errors name the run
  that is not an expert's, or the mismatch."""
  if "+" not in path or distributed.path(path).exists():  # A folder named with '+' is itself.
    return None
  parts = path.split("+")
  records = [read_run_expert(p) for p in parts]
  for part, record in zip(parts, records):
    if record is None:
      raise ValueError(f"{path}: {part} has no {RUN_EXPERT_JSON}; A+B names the two runs that "
                       "adapted the two experts of one pipeline (config.expert='high' / 'low')")
  if len(parts) != 2 or {r["expert"] for r in records} != {"high", "low"}:
    raise ValueError(f"{path}: expected one 'high' and one 'low' expert run, got "
                     f"{[r['expert'] for r in records]}")
  if records[0]["boundary_ratio"] != records[1]["boundary_ratio"]:
    raise ValueError(f"{path}: the runs adapted pipelines with boundary_ratio "
                     f"{records[0]['boundary_ratio']} and {records[1]['boundary_ratio']}")
  by_expert = {rec["expert"]: p for p, rec in zip(parts, records)}
  return by_expert["high"], by_expert["low"], records[0]["boundary_ratio"]


def t_range(pipeline: Pipeline, expert: str) -> tuple[float, float]:
  """The noise levels `[lo, hi)` at which `expert` runs when sampling (`hi = 1` included);
  every level for 'both'."""
  b = pipeline.boundary_ratio
  return {"high": (b, 1.0), "low": (0.0, b)}.get(expert, (0.0, 1.0))


def is_high_noise(t: jax.Array, boundary_ratio: float) -> jax.Array:
  """`[B]` bool: diffusers' test `timestep >= boundary_ratio * num_train_timesteps`, on the
  timestep the network sees (`t * 1000`, float32). `t` `[B]`, or `[B, F]` per frame (the
  highest level of the sample decides)."""
  t = jnp.asarray(t, jnp.float32)
  level = t if t.ndim == 1 else t.max(axis=tuple(range(1, t.ndim)))
  return level * NUM_TRAIN_TIMESTEPS >= boundary_ratio * NUM_TRAIN_TIMESTEPS


def routed_velocity(high_fn: Callable, low_fn: Callable, boundary_ratio: float) -> Callable:
  """A velocity function `(x, t, text, text_mask, null_text) -> v` that runs the high-noise
  expert on the samples at or above the boundary and the low-noise one below. A batch on one
  side (every step of a shared time grid) runs one expert (`lax.cond`); a mixed batch runs both
  and picks per sample."""
  def velocity(x, t, text, text_mask, null_text=None, **kwargs):
    high = is_high_noise(t, boundary_ratio)
    args = (x, t, text, text_mask, null_text)
    run = lambda fn: lambda a: fn(*a, **kwargs)  # Keyword arguments may be static (flags).
    mixed = lambda a: jnp.where(high.reshape((-1,) + (1,) * (x.ndim - 1)), run(high_fn)(a),
                                run(low_fn)(a))
    branch = jnp.where(jnp.all(high), 0, jnp.where(jnp.any(high), 2, 1))
    return jax.lax.switch(branch, [run(high_fn), run(low_fn), mixed], args)
  return velocity


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExpertParams:
  """The params of both experts, a pytree (pass it into `jax.jit` like one param tree); the
  boundary is static metadata."""
  high: Any
  low: Any
  boundary_ratio: float = dataclasses.field(metadata=dict(static=True))


class TwoExperts(nn.Module):
  """Both experts of a two-expert pipeline as one module, called like either of them:
  `apply(variables, x, t, text, text_mask, **kwargs)`, each sample run on the expert of its
  noise level (`is_high_noise`). Variables nest per expert: `{'params': {'high': ..., 'low':
  ...}, 'lora': {'high': ..., 'low': ...}}`, so one train step adapts both adapters, each only
  from the samples its expert ran.

  A batch on one side of the boundary runs one expert; a mixed batch runs both and picks per
  sample (`nn.switch`, as `routed_velocity` does for plain functions).
  """
  cfg: Any  # Both experts' ModelConfig (one shape).
  boundary_ratio: float

  def setup(self):
    from densedpo_jax.model.registry import build
    self.high, self.low = build(self.cfg), build(self.cfg)

  def __call__(self, x, t, text, text_mask, **kwargs):
    if self.is_initializing():  # Both experts' variables.
      self.low(x, t, text, text_mask, **kwargs)
      return self.high(x, t, text, text_mask, **kwargs)
    arrays = {k: v for k, v in kwargs.items() if hasattr(v, "shape")}  # image_emb.
    flags = {k: v for k, v in kwargs.items() if k not in arrays}  # Static: train, lora_enabled.
    high = is_high_noise(t, self.boundary_ratio)
    run = lambda name: lambda m, *a: getattr(m, name)(*a[:4], **a[4], **flags)

    def mixed(m, *a):
      pick = high.reshape((-1,) + (1,) * (x.ndim - 1))
      return jnp.where(pick, run("high")(m, *a), run("low")(m, *a))
    branch = jnp.where(jnp.all(high), 0, jnp.where(jnp.any(high), 2, 1))
    return nn.switch(branch, [run("high"), run("low"), mixed], self, x, t, text, text_mask, arrays)

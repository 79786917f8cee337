"""Export a trained run: the LoRA adapter for diffusers or ComfyUI, or the merged transformer.

    python -m densedpo_jax.export --workdir=RUN --format=diffusers-lora --out=FILE.safetensors
    python -m densedpo_jax.export --workdir=RUN --format=comfyui-lora --out=FILE.safetensors
    python -m densedpo_jax.export --workdir=RUN --format=diffusers --out=DIR

`diffusers-lora` (PEFT layout) loads with `WanPipeline.load_lora_weights(FILE)` (rank, alpha and
target modules in the file's `lora_adapter_metadata`). `comfyui-lora` uses the original Wan key
layout (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `lora_up`, `alpha`) that
ComfyUI's LoRA loader and musubi-tuner read; diffusers' `load_lora_weights` reads it too. DIR
loads with `WanTransformer3DModel.from_pretrained(DIR)`. The adapter is the run's EMA when it kept
one, else its trained LoRA, as in its exported params.

A run that adapted one expert of a Wan 2.2 A14B pipeline (`config.expert`) exports that expert's
adapter; the low-noise one loads with `load_lora_weights(FILE, load_into_transformer_2=True)`
(in ComfyUI: on the low-noise model). Both files have the same key layout. A run that adapted
both (`config.expert='both'`) exports one expert a call: `--expert=high` or `--expert=low`.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from densedpo_jax.interop import require_safetensors
from densedpo_jax.model import WanConfig, experts, family_of, pretrained, wan_weights

FORMATS = ("diffusers-lora", "comfyui-lora", "diffusers")
WEIGHTS_NAME = "diffusion_pytorch_model"


def _wan_config(workdir: str) -> WanConfig:
  cfg = pretrained.read_model_json(workdir)
  if family_of(cfg) != "wan":
    raise ValueError(f"{workdir}: the run trained a {family_of(cfg)!r} model; only Wan 2.1 "
                     "('wan') has a diffusers counterpart")
  return cfg


def _save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str]) -> None:
  from safetensors.numpy import save_file
  tmp = path + ".tmp"
  save_file(tensors, tmp, metadata=metadata)
  os.replace(tmp, path)  # Never a half-written file under the final name.


def _expert_tree(workdir: str, tree, expert: str | None) -> tuple[object, str]:
  """`(tree of the exported expert, its name)`: a run that adapted both experts nests its trees
  per expert and needs `expert`; a one-expert run's is its own (`expert`, if given, must match)."""
  record = experts.read_run_expert(workdir) or {}
  adapted = record.get("expert", "")
  if adapted == experts.BOTH:
    if expert not in experts.EXPERTS:
      raise ValueError(f"{workdir} adapted both experts: pass --expert=high or --expert=low "
                       "(one file each)")
    return tree[expert], expert
  if expert and expert != adapted:
    raise ValueError(f"--expert={expert}, but {workdir} adapted "
                     f"{'the ' + adapted + '-noise expert' if adapted else 'a one-transformer model'}")
  return tree, adapted


def export_lora(workdir: str, out: str, step: int | None = None, layout: str = "peft",
                expert: str | None = None) -> dict:
  """Writes the run's adapter as a LoRA file, `layout` 'peft' (diffusers) or 'wan' (the
  original Wan keys: ComfyUI, musubi-tuner); returns a summary. `expert`: which of a
  both-expert run's adapters."""
  if layout not in ("peft", "wan"):
    raise ValueError(f"layout={layout!r}; expected 'peft' or 'wan'")
  cfg = _wan_config(workdir)
  if cfg.lora.rank == 0:
    raise ValueError(f"{workdir}: the run has no LoRA adapter (lora.rank = 0)")
  step, state = pretrained.read_item(workdir, "state", step)
  lora, expert = _expert_tree(workdir, state.get("ema") or state["trainable"], expert)
  tensors, metadata = wan_weights.lora_to_peft(lora, cfg)
  if layout == "wan":
    tensors = wan_weights.peft_to_wan_original(tensors, metadata)
    _save_safetensors(tensors, out, {"format": "pt"})
  else:
    _save_safetensors(tensors, out, {"format": "pt",
                                     "lora_adapter_metadata": json.dumps(metadata, sort_keys=True)})
  return {"step": step, "tensors": len(tensors), "rank": cfg.lora.rank,
          "alpha": metadata["transformer.lora_alpha"], "out": out, "expert": expert}


def loading_hint(summary: dict, layout: str) -> str:
  """How to load an exported adapter, for the expert it belongs to."""
  expert = summary["expert"]
  if layout == "peft":
    second = ", load_into_transformer_2=True" if expert == "low" else ""
    return f"load with pipe.load_lora_weights({summary['out']!r}{second})"
  model = {"high": " on the high-noise model", "low": " on the low-noise model"}.get(expert, "")
  return f"load with ComfyUI's LoRA loader{model}"


def export_merged(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
                  max_shard_bytes: int = 5 * 2**30, expert: str | None = None) -> dict:
  """Writes the run's exported params (adapter folded in) as a diffusers transformer folder
  (`expert`: which of a both-expert run's)."""
  cfg = _wan_config(workdir)
  step, params = pretrained.read_item(workdir, "params", step)
  params, _ = _expert_tree(workdir, params, expert)
  state_dict = {k: v.astype(np.dtype(dtype)) for k, v in wan_weights.to_diffusers(params, cfg).items()}
  os.makedirs(out, exist_ok=True)
  for old in os.listdir(out):  # An earlier export's shards or index would shadow these weights.
    if old.startswith(WEIGHTS_NAME):
      os.remove(os.path.join(out, old))
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(wan_weights.diffusers_config(cfg), f, indent=1)
  shards, current, size = [], {}, 0
  for key, value in state_dict.items():
    if current and size + value.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key], size = value, size + value.nbytes
  shards.append(current)
  if len(shards) == 1:
    _save_safetensors(shards[0], os.path.join(out, f"{WEIGHTS_NAME}.safetensors"), {"format": "pt"})
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      name = f"{WEIGHTS_NAME}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      _save_safetensors(shard, os.path.join(out, name), {"format": "pt"})
      weight_map.update({k: name for k in shard})
    with open(os.path.join(out, f"{WEIGHTS_NAME}.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": sum(v.nbytes for v in state_dict.values())},
                 "weight_map": weight_map}, f, indent=1)
  return {"step": step, "tensors": len(state_dict), "files": len(shards), "out": out}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="the run's workdir")
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True, help="FILE.safetensors (diffusers-lora) or DIR")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="merged weights' dtype (diffusers format)")
  parser.add_argument("--expert", default=None, choices=tuple(experts.EXPERTS),
                      help="which expert of a run that adapted both (config.expert='both')")
  args = parser.parse_args(argv)
  require_safetensors("python -m densedpo_jax.export")
  if args.format in ("diffusers-lora", "comfyui-lora"):
    s = export_lora(args.workdir, args.out, args.step,
                    layout="peft" if args.format == "diffusers-lora" else "wan", expert=args.expert)
    layout = "peft" if args.format == "diffusers-lora" else "wan"
    print(f"step {s['step']}: {s['tensors']} LoRA tensors (rank {s['rank']}, alpha {s['alpha']})"
          f"{' of the ' + s['expert'] + '-noise expert' if s['expert'] else ''} -> {s['out']}; "
          f"{loading_hint(s, layout)}")
  else:
    s = export_merged(args.workdir, args.out, args.step, args.dtype, expert=args.expert)
    print(f"step {s['step']}: {s['tensors']} tensors in {s['files']} file(s) -> {s['out']}")


if __name__ == "__main__":
  main()

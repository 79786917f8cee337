"""Weight import: a diffusers Wan `transformer/` folder (or a whole pipeline folder) -> our params.

    python -m densedpo_jax.convert wan SRC DST [--dtype=bfloat16] [--scan_layers]

SRC is the `transformer/` folder of e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers (`config.json` and one
or several `*.safetensors` with their index). DST gets `checkpoints/0/params` (Orbax) and
`model.json`; `--config.init_from=DST` and `densedpo_jax.model.load_pretrained(DST)` read it.
SRC may also be a pipeline folder (`model_index.json`): each transformer is converted to
`DST/transformer/` (and, for a Wan 2.2 A14B pair, `DST/transformer_2/`) beside a
`DST/model_index.json` that keeps the `boundary_ratio`, so DST reads as the pipeline did.
argparse, not absl: these tools take positional paths and have no config file.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from flax import traverse_util

import json
import os

from densedpo_jax.interop import require_safetensors
from densedpo_jax.model import experts, pretrained, wan_weights

FAMILIES = ("wan",)


def convert_wan(src: str, dst: str, dtype: str = "float32", scan_layers: bool = False) -> dict:
  """Converts and writes; returns a summary (`tensors`, `parameters`, `bytes`, `seconds`)."""
  start = time.time()
  cfg = wan_weights.read_config(src).replace(param_dtype=dtype, scan_layers=scan_layers)
  params = wan_weights.load_diffusers(src, cfg)
  pretrained.save_params(dst, params, cfg)
  leaves = list(traverse_util.flatten_dict(params).values())
  return {"tensors": len(wan_weights.rules(cfg)),
          "parameters": int(sum(np.prod(v.shape) for v in leaves)),
          "bytes": int(sum(v.nbytes for v in leaves)), "seconds": time.time() - start,
          "config": cfg, "dst": dst}


def convert_pipeline(src: str, dst: str, dtype: str = "float32", scan_layers: bool = False
                     ) -> list[dict]:
  """Converts every transformer of the pipeline folder `src` (see the module doc); returns one
  summary a transformer."""
  pipeline = experts.read_pipeline(src)
  summaries = [convert_wan(folder, os.path.join(dst, experts.EXPERTS[name]), dtype, scan_layers)
               for name, folder in pipeline.transformers.items()]
  with open(os.path.join(src, experts.MODEL_INDEX)) as f:
    index = json.load(f)
  kept = {k: index[k] for k in ("_class_name", "boundary_ratio", *experts.EXPERTS.values())
          if k in index}
  with open(os.path.join(dst, experts.MODEL_INDEX), "w") as f:  # Last: DST is then complete.
    json.dump(kept, f, indent=1)
  return summaries


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("family", choices=FAMILIES)
  parser.add_argument("src", help="diffusers transformer/ folder, or a pipeline folder")
  parser.add_argument("dst", help="output params directory")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="stored parameter dtype (checkpoints on the hub are float32 or bf16)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="stack the blocks for a model with config.model.scan_layers=True")
  args = parser.parse_args(argv)
  require_safetensors("python -m densedpo_jax.convert")
  if experts.read_pipeline(args.src) is not None:
    summaries = convert_pipeline(args.src, args.dst, args.dtype, args.scan_layers)
  else:
    summaries = [convert_wan(args.src, args.dst, args.dtype, args.scan_layers)]
  for summary in summaries:
    cfg = summary["config"]
    print(f"converted {summary['tensors']} tensors, {summary['parameters']:,} parameters "
          f"({summary['bytes'] / 2**30:.2f} GiB {args.dtype}) of a Wan transformer (width "
          f"{cfg.width}, {cfg.depth} layers, {cfg.num_heads} heads) in {summary['seconds']:.1f} s "
          f"-> {summary['dst']}")


if __name__ == "__main__":
  main()

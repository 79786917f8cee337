"""Encoding throughput of `python -m densedpo_jax.encode` for Wan: the VAE and umT5, clips a minute.

    python -m benchmarks.wan_encode                          # 81 x 480 x 832, bf16, on the GPU
    python -m benchmarks.wan_encode --dtype float32 --clips 2
    python -m benchmarks.wan_encode --tiny --frames 9 --height 64 --width 64   # a CPU smoke run

The VAE runs through `interop.wan_encoders.WanEncoders.encode_videos`, the code `encode` runs,
on a folder holding a Wan 2.1 VAE of the published size (diffusers' `AutoencoderKLWan` defaults:
base 96, 16 latent channels; random weights, so time only) written to a temporary folder. umT5
is the XXL encoder's config (24 layers, d_model 4096, 64 heads, gated-GELU 10240; 5.7B
parameters), built in memory on the device with random weights, and run as `embed_prompts`
runs it: a batch of `--prompts` prompts padded to 512 tokens. Reports seconds a clip and a
prompt (medians of `--runs`) and clips a minute for both together; a clip's share of a dataset's
build time is this against `benchmarks.wan_pairs`' seconds a pair (one pair a clip).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                num_decoder_layers=24, num_heads=64, relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False)
UMT5_TINY = dict(vocab_size=256384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                 is_encoder_decoder=False)


def _median_seconds(fn, runs: int, sync) -> float:
  fn()  # Warm-up (cuDNN autotuning, allocator).
  sync()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--clips", type=int, default=1, help="clips a VAE call")
  parser.add_argument("--prompts", type=int, default=8, help="prompts a umT5 call")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--tiny", action="store_true", help="tiny VAE and umT5: a CPU smoke run")
  args = parser.parse_args(argv)
  import torch
  from diffusers import AutoencoderKLWan
  from transformers import UMT5Config, UMT5EncoderModel
  from densedpo_jax.interop.wan_encoders import MAX_TEXT_TOKENS, WanEncoders
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  dtype = getattr(torch, args.dtype)
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (args.clips, args.frames, args.height, args.width, 3), np.uint8)
  with tempfile.TemporaryDirectory() as folder:
    vae = (AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]) if args.tiny
           else AutoencoderKLWan())
    vae.save_pretrained(os.path.join(folder, "vae"))
    del vae
    encoders = WanEncoders(folder, text=False, device=device, dtype=args.dtype)
    latents = encoders.encode_videos(videos)
    vae_s = _median_seconds(lambda: encoders.encode_videos(videos), args.runs, sync)
    encoders.vae = None  # Frees the VAE's memory for umT5.
  with torch.device(device):
    text_encoder = UMT5EncoderModel(UMT5Config(**(UMT5_TINY if args.tiny else UMT5_XXL)))
  text_encoder = text_encoder.to(dtype).eval()
  params = sum(p.numel() for p in text_encoder.parameters())
  ids = torch.from_numpy(rng.integers(3, 30000, (args.prompts, MAX_TEXT_TOKENS))).to(device)
  mask = torch.ones_like(ids)
  mask[:, 120:] = 0  # A typical prompt's length; the pipeline pads to 512 all the same.

  def embed():
    with torch.no_grad():
      return text_encoder(ids, mask).last_hidden_state
  text_s = _median_seconds(embed, args.runs, sync)
  per_clip = vae_s / args.clips + text_s / args.prompts
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  print(f"\ndevice: {name}, torch {torch.__version__}, {args.dtype}; clips "
        f"{args.frames} x {args.height} x {args.width} -> latent {list(latents.shape[1:])}, "
        f"{args.clips} a VAE call; umT5 {params / 1e9:.2f}B parameters, {args.prompts} prompts "
        f"of {MAX_TEXT_TOKENS} tokens a call; medians of {args.runs}\n")
  print("| part | s a clip | clips a minute |")
  print("|---|---|---|")
  for part, sec in (("VAE encode", vae_s / args.clips), ("umT5 (one prompt)", text_s / args.prompts),
                    ("both", per_clip)):
    print(f"| {part} | {sec:.3f} | {60 / sec:,.1f} |")


if __name__ == "__main__":
  main()

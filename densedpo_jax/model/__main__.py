"""Prints the size presets of every family: parameters, LoRA parameters and forward FLOPs per video.

    python -m densedpo_jax.model [--lora_rank=128]
"""
import argparse

from densedpo_jax.model import FAMILIES, LoRAConfig, forward_flops, param_count

# Latent size each preset is meant for: [T, H, W] and text length.
TYPICAL_INPUT = {
    "tiny": ((16, 16, 16), 16),     # ShapesWorld pixels.
    "small": ((13, 32, 32), 128),
    "base": ((13, 60, 104), 226),   # 49 frames of 480x832 through a 4x8x8 VAE.
    "paper": ((13, 60, 104), 226),
    "wan2.1-t2v-1.3b": ((21, 60, 104), 512),  # 81 frames of 480x832 through the Wan VAE.
    "wan2.1-t2v-14b": ((21, 60, 104), 512),
    "wan2.1-i2v-14b": ((21, 60, 104), 512),  # 480P; the image branch adds 257 CLIP tokens.
    "wan2.2-ti2v-5b": ((31, 44, 80), 512),   # 121 frames of 704x1280 through the Wan 2.2 VAE.
    "wan2.2-t2v-a14b": ((21, 60, 104), 512),  # One expert of the pair.
    "wan2.2-i2v-a14b": ((21, 60, 104), 512),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lora_rank", type=int, default=128)
  args = parser.parse_args()
  print(f"{'family':<6} {'preset':<16} {'width':>5} {'depth':>5} {'params':>15} {'lora':>9} "
        f"{'latent [T,H,W]':>15} {'tokens':>7} {'fwd GFLOP/video':>16}")
  for family, (_, presets) in FAMILIES.items():
    for name, cfg in presets.items():
      (t, h, w), text_len = TYPICAL_INPUT[name]
      lora_cfg = cfg.replace(lora=LoRAConfig(rank=args.lora_rank))
      tokens = (t // cfg.patch_size[0]) * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
      gflop = forward_flops(lora_cfg, 1, t, h, w, text_len) / 1e9
      print(f"{family:<6} {name:<16} {cfg.width:>5} {cfg.depth:>5} {param_count(cfg):>15,} "
            f"{param_count(lora_cfg, 'lora') / 1e6:>8.2f}M {str([t, h, w]):>15} {tokens:>7} "
            f"{gflop:>16,.1f}")


if __name__ == "__main__":
  main()

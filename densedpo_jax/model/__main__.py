"""Prints the size presets: parameters, LoRA parameters and forward FLOPs per video.

    python -m densedpo_jax.model [--lora_rank=128]
"""
import argparse

from densedpo_jax.model import LoRAConfig, PRESETS, forward_flops, param_count

# Latent size each preset is meant for: [T, H, W] and text length.
TYPICAL_INPUT = {
    "tiny": ((16, 16, 16), 16),     # ShapesWorld pixels.
    "small": ((13, 32, 32), 128),
    "base": ((13, 60, 104), 226),   # 49 frames of 480x832 through a 4x8x8 VAE.
    "paper": ((13, 60, 104), 226),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lora_rank", type=int, default=128)
  args = parser.parse_args()
  print(f"{'preset':<7} {'width':>5} {'depth':>5} {'params':>10} {'lora':>9} {'latent [T,H,W]':>16} "
        f"{'tokens':>7} {'fwd GFLOP/video':>16}")
  for name, cfg in PRESETS.items():
    (t, h, w), text_len = TYPICAL_INPUT[name]
    lora_cfg = cfg.replace(lora=LoRAConfig(rank=args.lora_rank))
    tokens = (t // cfg.patch_size[0]) * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    gflop = forward_flops(lora_cfg, 1, t, h, w, text_len) / 1e9
    print(f"{name:<7} {cfg.width:>5} {cfg.depth:>5} {param_count(cfg) / 1e6:>9.1f}M "
          f"{param_count(lora_cfg, 'lora') / 1e6:>8.2f}M {str([t, h, w]):>16} {tokens:>7} {gflop:>16.1f}")


if __name__ == "__main__":
  main()

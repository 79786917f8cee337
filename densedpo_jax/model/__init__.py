"""The video DiTs (VideoDiT, Wan 2.1) and their LoRA adapters. No training code lives here.

    module, variables = load_pretrained("Wan2.1-T2V-1.3B-Diffusers/transformer")
    v = module.apply(variables, x, t, text, text_mask)   # x [B, F, H, W, 16], t [B] in [0, 1]
"""
from densedpo_jax.model.config import (FAMILIES, LORA_TARGETS, PRESETS, WAN_PRESETS, DiTConfig,
                                       LoRAConfig, ModelConfig, WanConfig, family_of,
                                       get_dit_config, get_model_config)
from densedpo_jax.model.dit import VideoDiT
from densedpo_jax.model.flops import forward_flops, param_count
from densedpo_jax.model.lora import merge_lora
from densedpo_jax.model.pretrained import load_pretrained
from densedpo_jax.model.registry import build
from densedpo_jax.model.wan import WanTransformer

__all__ = ["DiTConfig", "FAMILIES", "LoRAConfig", "LORA_TARGETS", "ModelConfig", "PRESETS",
           "VideoDiT", "WAN_PRESETS", "WanConfig", "WanTransformer", "build", "family_of",
           "forward_flops", "get_dit_config", "get_model_config", "load_pretrained", "merge_lora",
           "param_count"]

"""The video DiT and its LoRA adapter. No training code lives here."""
from densedpo_jax.model.config import (LORA_TARGETS, PRESETS, DiTConfig, LoRAConfig,
                                       get_dit_config)
from densedpo_jax.model.dit import VideoDiT
from densedpo_jax.model.flops import forward_flops, param_count
from densedpo_jax.model.lora import merge_lora

__all__ = ["DiTConfig", "LoRAConfig", "LORA_TARGETS", "PRESETS", "VideoDiT", "forward_flops",
           "get_dit_config", "merge_lora", "param_count"]

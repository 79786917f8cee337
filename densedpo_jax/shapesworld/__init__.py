"""ShapesWorld: the procedural text-to-video world (DESIGN.md section 4).

`world` draws and renders scenes; `text_encoder` is the T5 stand-in.
"""
from densedpo_jax.shapesworld.text_encoder import HashTextEncoder
from densedpo_jax.shapesworld.world import Scene, WorldConfig, generate, prompts, render, sample_scene

__all__ = ["HashTextEncoder", "Scene", "WorldConfig", "generate", "prompts", "render", "sample_scene"]

"""ShapesWorld: the procedural text-to-video world (docs/shapesworld.md).

`world` draws and renders scenes; `text_encoder` is the T5 stand-in; `artifacts` corrupts
segments of a video; `judge` scores videos from pixels (no learned weights).
"""
from densedpo_jax.shapesworld.artifacts import corrupt
from densedpo_jax.shapesworld.judge import judge_video, score_videos
from densedpo_jax.shapesworld.text_encoder import HashTextEncoder
from densedpo_jax.shapesworld.world import Scene, WorldConfig, generate, prompts, render, sample_scene

__all__ = ["HashTextEncoder", "Scene", "WorldConfig", "corrupt", "generate", "judge_video", "prompts", "render",
           "sample_scene", "score_videos"]

"""Labeling (task=label) of generated pairs by a ShapesWorld oracle.

  segment (default)  per-segment judge comparison with a tie margin: the dense "human"
  global             whole-video preference from total artifacts: the motion-biased "human"
  jsonl              attach a JSONL label file (people, a VLM, another team): --config.label.file
  vlm                a vision-language model over the Chat Completions protocol (label.vlm.*)
"""
import dataclasses

import ml_collections

from configs import common
from densedpo_jax.labeling.vlm import VLMSettings


def get_config(arg=None):
  labeler = arg or "segment"
  c = common.base()
  c.task = "label"
  c.label = ml_collections.ConfigDict()
  c.label.labeler = labeler
  # Judge segment-quality difference below which a segment is a tie. 0.014: on the main job's
  # 256 guided pairs of the shipped base model (training prompts) the median |difference| is
  # 0.0142, so about half the segments get a winner.
  c.label.tie_margin = 0.014
  # Motion-bias experiment (segment labeler): 'faster' / 'slower' keeps only the segment labels
  # whose winner is the faster / slower member there (the others become ties); 'all': every one.
  c.label.keep_wins = "all"
  c.label.flip_prob = 0.0  # Label noise: flip this share of non-tie labels (Tab. 4 ablation).
  c.label.seed = 0
  c.label.max_pairs = 0  # Label only the first max_pairs pairs (a labeling budget); 0: all.
  c.label.in_dir = "workdirs/pairs_guided"
  c.label.in_name = "pairs"
  c.label.out_dir = "workdirs/pairs_guided"
  c.label.out_name = f"pairs_{labeler}"
  c.label.file = ""  # labeler=jsonl: the label file (data/labels_io.py format).
  c.label.source = "human"  # labeler=jsonl: provenance stored on the labeled pairs.
  # labeler=vlm: every VLMSettings field (API key from the environment variable api_key_env;
  # cache '' = <out_dir>/<out_name>.vlm_cache.sqlite), a dry run that only counts the calls, and
  # the decoded videos of non-ShapesWorld pairs (python -m densedpo_jax.decode output).
  c.label.vlm = ml_collections.ConfigDict(dataclasses.asdict(VLMSettings()))
  c.label.vlm.dry_run = False
  c.label.videos_dir = ""
  c.label.num_previews = 8  # GIFs of the first labeled pairs, with label strips, for people.
  return c

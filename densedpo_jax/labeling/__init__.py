"""Preference labelers (docs/labeling.md): the ShapesWorld judge as dense and global oracle.

  oracle   Labeler interface, SegmentOracle, GlobalOracle, majority_vote, flip_labels,
           label_dataset (labels a pair dataset into a new one, with motion-bias statistics)
  vlm        VLMLabeler over the Chat Completions protocol: retries, budgets, failure stops
  vlm_prompt what the VLM is asked (template, frames as JPEG data URLs) and how answers are read
  vlm_cache  the sqlite cache of paid answers
"""
from densedpo_jax.labeling.oracle import (GlobalOracle, Labeler, SegmentOracle, flip_labels, identity_decoder,
                                          label_dataset, majority_vote)

__all__ = ["GlobalOracle", "Labeler", "SegmentOracle", "flip_labels", "identity_decoder", "label_dataset",
           "majority_vote"]

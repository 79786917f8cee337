"""Preference labelers (docs/labeling.md): the ShapesWorld judge as dense and global oracle.

  oracle   Labeler interface, SegmentOracle, GlobalOracle, majority_vote, flip_labels,
           label_dataset (labels a pair dataset into a new one, with motion-bias statistics)
"""
from densedpo_jax.labeling.oracle import (GlobalOracle, Labeler, SegmentOracle, flip_labels, identity_decoder,
                                          label_dataset, majority_vote)

__all__ = ["GlobalOracle", "Labeler", "SegmentOracle", "flip_labels", "identity_decoder", "label_dataset",
           "majority_vote"]

"""Evaluation metrics that need no model download: motion and temporal consistency of video
files (`temporal`, OpenCV optical flow; the `[metrics]` extra) and paired bootstrap intervals
over prompts (`bootstrap`)."""

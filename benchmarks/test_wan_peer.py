"""`benchmarks/wan_peer.py`, the PyTorch peer of our Wan DenseDPO step: its loss is DenseDPO's
(against the float64 loop reference), and on one tiny model its policy and reference equal ours
and its adapter, alone, gets gradients."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from benchmarks import wan_peer  # noqa: E402
from tests.helpers import dpo_units_reference, forward_gap_bound  # noqa: E402


def test_the_peer_loss_is_dense_segment_dpo():
  """Segments of mixed length, ties and a segment whose frames disagree (a tie), in float64
  against the loops."""
  rng = np.random.default_rng(0)
  b, t, beta = 3, 7, 300.0
  errs = [rng.uniform(0.5, 1.5, (b, t)) for _ in range(4)]
  ids = np.array([[0, 0, 0, 3, 3, 5, 5], [0, 1, 2, 3, 4, 5, 6], [0, 0, 2, 2, 2, 2, 6]])
  labels = np.array([[1, 1, 1, -1, -1, 1, 0], [1, -1, 0, 1, 1, -1, 0], [1, -1, 0, 0, 0, 0, -1]])
  got = wan_peer.dense_dpo_loss(*(torch.from_numpy(e) for e in errs), torch.from_numpy(labels),
                                torch.from_numpy(ids), beta)
  # The reference's units: each segment's mean errors, its label when all its frames agree.
  seg_errs = [np.zeros((b, t)) for _ in range(4)]
  seg_labels, valid = np.zeros((b, t), int), np.zeros((b, t), bool)
  for i in range(b):
    for s in np.unique(ids[i]):
      frames = ids[i] == s
      valid[i, s] = True
      for k in range(4):
        seg_errs[k][i, s] = errs[k][i, frames].mean()
      values = set(labels[i, frames])
      seg_labels[i, s] = values.pop() if len(values) == 1 else 0
  want = dpo_units_reference(seg_errs, seg_labels, valid, beta)["loss"]
  assert abs(float(got) - want) <= 1e-12 * abs(want)


def test_the_peer_computes_our_step_on_one_tiny_model():
  r = wan_peer.check()
  bound = forward_gap_bound(1.0, r["depth"], 256)  # As the whole-model parity tests.
  assert r["v_theta_rel"] <= bound and r["v_ref_rel"] <= bound, r
  assert r["no_grad"] == [] and not r["base_has_grad"], r  # Only the adapter trains, all of it.


"""`benchmarks/peer_wheels.py`: the wheels it fetches for a GPU machine are the peer's packages and
what they import, without what a GPU image already has."""
import pytest

pytest.importorskip("diffusers")  # The list comes from what is installed: the [interop] extra.
pytest.importorskip("peft")

from benchmarks import peer_wheels  # noqa: E402


def test_the_wheel_list_holds_the_peer_and_leaves_out_what_a_gpu_image_has():
  pins = peer_wheels.closure()
  assert {"diffusers", "peft", "transformers", "huggingface-hub", "safetensors"} <= set(pins)
  assert not {"torch", "numpy", "triton"} & set(pins)
  assert not [n for n in pins if n.startswith("nvidia-")]

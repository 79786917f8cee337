"""`benchmarks/wan_encode.py` runs end to end on a tiny VAE and umT5 (the GPU runs it at full
size, once) and prints its table."""
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import wan_encode  # noqa: E402

pytestmark = pytest.mark.e2e  # A whole run of the tool (a VAE, umT5).


def _rows(out: str, first: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
          if line.startswith(f"| {first}")]


def test_encode_times_the_vae_and_umt5(capsys):
  wan_encode.main(["--tiny", "--frames", "5", "--height", "32", "--width", "32", "--dtype",
                   "float32", "--prompts", "2", "--runs", "1"])
  out = capsys.readouterr().out
  assert "latent [2, 4, 4, 16]" in out, out  # 5 frames -> 1 + 4/4 latent frames, 8x spatial.
  rows = _rows(out, "VAE") + _rows(out, "umT5") + _rows(out, "both")
  assert len(rows) == 3 and all(float(r[1]) > 0 for r in rows), out

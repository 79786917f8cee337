"""`benchmarks/wan_pairs.py` and `benchmarks/wan_encode.py` run end to end on tiny models (the
GPU runs them at full size, once: a broken tool there costs the whole run) and print their
tables."""
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import wan_encode, wan_pairs  # noqa: E402


def _rows(out: str, first: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
          if line.startswith(f"| {first}")]


def test_pairs_time_both_samplers_for_the_same_steps(capsys):
  wan_pairs.main(["--tiny", "--latent", "3,8,8", "--text_len", "16", "--cfg_scale", "5",
                  "--calls", "2", "--runs", "1"])
  out = capsys.readouterr().out
  ours = re.search(r"\[ours\] [0-9.]+ s for 1 pair\(s\), (\d+) steps", out)
  theirs = re.search(r"\[diffusers\] [0-9.]+ s for 1 pair\(s\), (\d+) steps", out)
  assert ours and theirs and ours.group(1) == theirs.group(1), out
  rows = _rows(out, "ours") + _rows(out, "diffusers")
  assert len(rows) == 2 and all(float(r[1]) >= 0 and float(r[2].replace(",", "")) > 0
                                for r in rows), out
  assert "time a pair, ours / diffusers:" in out


def test_encode_times_the_vae_and_umt5(capsys):
  wan_encode.main(["--tiny", "--frames", "5", "--height", "32", "--width", "32", "--dtype",
                   "float32", "--prompts", "2", "--runs", "1"])
  out = capsys.readouterr().out
  assert "latent [2, 4, 4, 16]" in out, out  # 5 frames -> 1 + 4/4 latent frames, 8x spatial.
  rows = _rows(out, "VAE") + _rows(out, "umT5") + _rows(out, "both")
  assert len(rows) == 3 and all(float(r[1]) > 0 for r in rows), out

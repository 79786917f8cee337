"""`benchmarks/wan_pairs.py` runs end to end on a tiny model (the GPU runs it at full size, once: a
broken tool there costs the whole run) and times both samplers over the same steps."""
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from benchmarks import wan_pairs  # noqa: E402

pytestmark = pytest.mark.e2e  # A whole run of the tool (a diffusers pipeline).


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

"""Wheels of the PyTorch peer's packages for a GPU machine that cannot reach a package index.

    python -m benchmarks.peer_wheels --out=wheels/peer            # here, where pip reaches PyPI
    pip install --no-index --no-deps wheels/peer/*.whl            # there (gpu_checks.sh does it)

`benchmarks.wan_peer` needs diffusers and PEFT (and what they import: transformers,
huggingface_hub, ...) beside the torch and numpy a GPU image already has. This resolves that
closure from the distributions installed here (`pip install -e ".[interop]"`: the versions the
tests use), leaves out torch, NVIDIA's libraries, triton and numpy, and downloads each at the
same version as a wheel for `--python` on manylinux x86_64. Prints the list and the total size.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import subprocess
import sys

ROOTS = ("diffusers", "peft")
SKIP = re.compile(r"^(torch|torchvision|torchaudio|triton|numpy|nvidia-.*|cuda-.*)$")


def _name(requirement: str) -> str:
  return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def closure(roots=ROOTS) -> dict[str, str]:
  """`{distribution: installed version}` of `roots` and their unconditional requirements
  (markers of extras dropped, others evaluated here), minus what a GPU image has."""
  from packaging.requirements import Requirement
  seen, todo = {}, list(roots)
  while todo:
    name = todo.pop()
    if name in seen or SKIP.match(name):
      continue
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      raise SystemExit(f"peer_wheels: {name} is not installed here; pip install -e \".[interop]\" "
                       "first") from None
    seen[name] = dist.version
    for text in dist.requires or []:
      req = Requirement(text)
      if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
      todo.append(_name(text))
  return dict(sorted(seen.items()))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="wheels/peer")
  parser.add_argument("--python", default="3.12", help="the GPU machine's Python")
  args = parser.parse_args(argv)
  pins = [f"{n}=={v}" for n, v in closure().items()]
  print("peer_wheels:", " ".join(pins), flush=True)
  os.makedirs(args.out, exist_ok=True)
  platforms = [a for p in ("manylinux2014_x86_64", "manylinux_2_17_x86_64",
                           "manylinux_2_28_x86_64", "manylinux_2_34_x86_64", "any")
               for a in ("--platform", p)]
  subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", args.out,
                  "--only-binary=:all:", "--python-version", args.python, *platforms, *pins],
                 check=True)
  files = sorted(f for f in os.listdir(args.out) if f.endswith(".whl"))
  size = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
  print(f"peer_wheels: {len(files)} wheels, {size / 2 ** 20:.1f} MiB in {args.out}")


if __name__ == "__main__":
  main()

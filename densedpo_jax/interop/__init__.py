"""Commands that read and write other projects' formats with their libraries (diffusers, PEFT,
PyTorch, PyAV): the Wan weight import (`convert_wan`), adapter and model export
(`export_diffusers`), video encoding and decoding (`encode_videos`, `decode_records`) and video
files (`video_io`). The model, objectives, data and training never import it: the diffusers <->
Flax weight mapping they need (`model/wan_weights.py`) reads safetensors and needs no torch.
`previews` and the tasks import `video_io` and `decode_records` inside the functions that write
or read real videos, so PyAV and PyTorch load only when a job asks for them."""

# Top-level modules of the [interop] extra's packages (PyPI name -> import name where they differ).
EXTRA_MODULES = frozenset({"torch", "diffusers", "transformers", "safetensors", "peft", "av",
                           "sentencepiece", "tokenizers"})


def missing_extra(error: ModuleNotFoundError, command: str) -> str:
  """The one line a command prints when the [interop] extra is not installed; re-raises `error`
  when the missing module is not one of the extra's (a real bug, not a missing install)."""
  if (error.name or "").split(".")[0] not in EXTRA_MODULES:
    raise error
  return (f"{command} needs the [interop] extra (module {error.name!r} is not installed): "
          "pip install torch==2.13.0 -e '.[interop]' in a clone, or pip install "
          "'densedpo_jax[interop]' (torch first, with the pin of the build you want)")


def require_safetensors(command: str) -> None:
  """Exits with `missing_extra`'s line when safetensors (the weight format) is not installed."""
  try:
    import safetensors  # noqa: F401
  except ModuleNotFoundError as e:
    raise SystemExit(missing_extra(e, command)) from None

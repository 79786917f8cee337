"""Commands that read and write other projects' formats with their libraries (diffusers, PEFT,
PyTorch, PyAV): the Wan weight import (`convert_wan`), adapter and model export
(`export_diffusers`), video encoding and decoding (`encode_videos`, `decode_records`) and video
files (`video_io`). The model, objectives, data and training never import it: the diffusers <->
Flax weight mapping they need (`model/wan_weights.py`) reads safetensors and needs no torch.
`previews` and the tasks import `video_io` and `decode_records` inside the functions that write
or read real videos, so PyAV and PyTorch load only when a job asks for them."""

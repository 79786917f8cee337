"""The Wan VAEs (2.1 and 2.2) and umT5 text encoder (PyTorch, from a diffusers checkpoint folder).

    encoders = WanEncoders("Wan2.1-T2V-1.3B-Diffusers")      # its vae/, text_encoder/, tokenizer/
    latents = encoders.encode_videos(videos)     # uint8 [B, F, H, W, 3] -> [B, 1 + (F-1)/4, H/s, W/s, C]
    videos = encoders.decode_latents(latents)    # the inverse, uint8
    emb, lengths = encoders.embed_prompts(prompts)   # [B, 512, 4096] zero-padded past each length

The Wan 2.1 VAE (every Wan 2.1 model and Wan 2.2 A14B) has C = 16 channels and s = 8; the Wan 2.2
VAE (TI2V-5B) C = 48 and s = 16. Latents are normalised as the Wan pipeline expects them: `(mode - latents_mean) / latents_std`,
per channel, with the mean/std of the VAE's config (the published values). Prompts are cleaned,
tokenised to 512 tokens and embedded exactly as `WanPipeline._get_t5_prompt_embeds` does. The VAE
and umT5 stay in PyTorch (maxdiffusion keeps umT5 there as well); they run on the GPU when there is
one.
"""
from __future__ import annotations

import os

import numpy as np

import json

MAX_TEXT_TOKENS = 512  # The Wan pipeline's max_sequence_length.
VAE_FAMILIES = {16: "wan2.1", 48: "wan2.2"}  # Latent channels -> the VAE's model family.
PATCH = 2  # The Wan transformers' spatial patch: frame sizes are multiples of 2 s.


def vae_geometry(weights: str) -> dict:
  """`{'family', 'latent_channels', 'temporal_factor', 'spatial_factor'}` of the VAE in
  `weights/vae/config.json`, read without loading it; errors name the file."""
  file = os.path.join(weights, "vae", "config.json")
  try:
    with open(file) as f:
      c = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise FileNotFoundError(f"{file}: cannot read the VAE config: {e}") from e
  z = c.get("z_dim", 16)
  if z not in VAE_FAMILIES:
    raise ValueError(f"{file}: z_dim={z}; expected a Wan VAE ({sorted(VAE_FAMILIES)} channels)")
  return {"family": VAE_FAMILIES[z], "latent_channels": z,
          "temporal_factor": c.get("scale_factor_temporal") or 4,
          "spatial_factor": c.get("scale_factor_spatial") or 8}


def check_weights_folder(weights: str, vae: bool = True, text: bool = True) -> None:
  """FileNotFoundError naming what is missing, before any model loads (and before a library
  would take a wrong local path for a hub id and try to download it)."""
  need = (["vae"] if vae else []) + (["text_encoder", "tokenizer"] if text else [])
  if not os.path.isdir(weights):
    raise FileNotFoundError(f"--weights={weights}: no such folder; expected a Wan diffusers "
                            f"folder with {', '.join(f'{d}/' for d in need)} (nothing is downloaded)")
  missing = [f"{d}/" for d in need if not os.path.isdir(os.path.join(weights, d))]
  if missing:
    raise FileNotFoundError(f"--weights={weights}: no {', '.join(missing)} in it; expected a Wan "
                            "diffusers folder (nothing is downloaded)")


def check_image_encoder(weights: str) -> None:
  """A folder whose transformer reads CLIP image features (`image_dim`, Wan 2.1 I2V) must have
  the `image_encoder/` and `image_processor/` that make them; FileNotFoundError naming them."""
  config = os.path.join(weights, "transformer", "config.json")
  try:
    with open(config) as f:
      image_dim = json.load(f).get("image_dim")
  except (OSError, json.JSONDecodeError):
    return  # No transformer here: the condition needs only the VAE.
  missing = [d for d in ("image_encoder", "image_processor")
             if not os.path.isdir(os.path.join(weights, d))]
  if image_dim and missing:
    raise FileNotFoundError(f"{config} has image_dim={image_dim} (CLIP image features), but "
                            f"{weights} has no {', '.join(d + '/' for d in missing)}")


class WanEncoders:
  """Loads whichever of the VAE and the text encoder are asked for; float32 by default."""

  def __init__(self, weights: str, *, vae: bool = True, text: bool = True, image: bool = False,
               device: str | None = None, dtype: str = "float32"):
    """`image`: also the CLIP image encoder of the folder's `image_encoder/` (Wan 2.1 I2V), when
    it has one."""
    check_weights_folder(weights, vae, text)
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel
    self.torch = torch
    self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    self.dtype = getattr(torch, dtype)
    self.vae = self.tokenizer = self.text_encoder = self.image_encoder = None
    if vae:
      self.vae = AutoencoderKLWan.from_pretrained(weights, subfolder="vae", torch_dtype=self.dtype,
                                                  local_files_only=True)
      self.vae.to(self.device).eval()
      c = self.vae.config
      self.temporal_factor, self.spatial_factor = c.scale_factor_temporal, c.scale_factor_spatial
      self.latent_channels = c.z_dim
      self.mean = torch.tensor(c.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
      self.std = torch.tensor(c.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    if text:
      self.tokenizer = AutoTokenizer.from_pretrained(weights, subfolder="tokenizer",
                                                     local_files_only=True)
      self.text_encoder = UMT5EncoderModel.from_pretrained(weights, subfolder="text_encoder",
                                                           torch_dtype=self.dtype,
                                                           local_files_only=True)
      self.text_encoder.to(self.device).eval()
    if image and os.path.isdir(os.path.join(weights, "image_encoder")):
      from transformers import CLIPImageProcessor, CLIPVisionModel
      self.image_processor = CLIPImageProcessor.from_pretrained(
          weights, subfolder="image_processor", local_files_only=True)
      self.image_encoder = CLIPVisionModel.from_pretrained(
          weights, subfolder="image_encoder", torch_dtype=self.dtype, local_files_only=True)
      self.image_encoder.to(self.device).eval()

  # Video.

  def _encode(self, x) -> np.ndarray:
    """`[B, 3, F, H, W]` in [-1, 1] -> normalised latents `[B, F', h, w, C]`, channels last."""
    with self.torch.no_grad():
      mode = self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mode().float().cpu()
    return ((mode - self.mean) / self.std).permute(0, 2, 3, 4, 1).numpy()

  def encode_conditions(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The image-to-video condition of each clip's first frame, as `WanImageToVideoPipeline`
    builds it (model/conditioning.py): with the Wan 2.1 VAE (16 channels: Wan 2.1 I2V, Wan 2.2
    I2V-A14B) the latent of the first frame followed by zero (mid-grey) frames, `[B, 1 + k, h, w,
    16]`; with the Wan 2.2 VAE (TI2V) the first frame's latent alone, `[B, 1, h, w, 48]`. Plus its
    CLIP features (the second-to-last hidden states, `[B, 257, 1280]` for ViT-H) when the folder
    has an image encoder, else None."""
    torch = self.torch
    first = torch.from_numpy(np.ascontiguousarray(videos[:, :1])).permute(0, 4, 1, 2, 3)
    first = first.float() / 127.5 - 1.0
    if self.latent_channels == 16:  # The rest of the clip as zeros in [-1, 1] (the pipeline's).
      rest = first.new_zeros(first.shape[:2] + (videos.shape[1] - 1,) + first.shape[3:])
      first = torch.cat([first, rest], dim=2)
    latents = self._encode(first)
    image_emb = None
    if self.image_encoder is not None:
      inputs = self.image_processor(images=list(videos[:, 0]), return_tensors="pt")
      with torch.no_grad():
        out = self.image_encoder(pixel_values=inputs.pixel_values.to(self.device, self.dtype),
                                 output_hidden_states=True)
      image_emb = out.hidden_states[-2].float().cpu().numpy()
    return latents, image_emb

  def encode_videos(self, videos: np.ndarray) -> np.ndarray:
    """uint8 `[B, F, H, W, 3]` (F = 1 + 4k; H, W multiples of 2 s) -> normalised float32 latents
    `[B, 1 + k, H/s, W/s, C]`, channels last."""
    x = self.torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 4, 1, 2, 3)
    return self._encode(x.float() / 127.5 - 1.0)

  def decode_latents(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents `[B, T', h, w, C]` -> uint8 videos `[B, 1 + 4 (T'-1), s h, s w, 3]`."""
    torch = self.torch
    z = torch.from_numpy(np.asarray(latents, np.float32)).permute(0, 4, 1, 2, 3)
    z = (z * self.std + self.mean).to(self.device, self.dtype)
    with torch.no_grad():
      video = self.vae.decode(z, return_dict=False)[0].float().cpu()
    video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).numpy()

  # Text.

  def _tokenize(self, prompts: list[str]):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    return self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                          max_length=MAX_TEXT_TOKENS, truncation=True, add_special_tokens=True,
                          return_attention_mask=True, return_tensors="pt")

  def token_lengths(self, prompts: list[str]) -> list[int]:
    """Real token counts (end token included, at most 512) of each prompt."""
    return self._tokenize(prompts).attention_mask.sum(1).tolist()

  def embed_prompts(self, prompts: list[str]) -> tuple[np.ndarray, list[int]]:
    """float32 `[B, 512, D]` umT5 embeddings, zero past each prompt's length, and the lengths."""
    torch = self.torch
    tokens = self._tokenize(prompts)
    with torch.no_grad():
      emb = self.text_encoder(tokens.input_ids.to(self.device),
                              tokens.attention_mask.to(self.device)).last_hidden_state
    emb = emb.float().cpu().numpy()
    lengths = tokens.attention_mask.sum(1).tolist()
    for row, n in zip(emb, lengths):
      row[n:] = 0.0
    return emb, lengths

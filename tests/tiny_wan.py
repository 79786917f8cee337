"""A Wan 2.1 diffusers folder of tiny random models, built from configs (no download): `vae/`
(AutoencoderKLWan, diffusers' own test config), `text_encoder/` (UMT5EncoderModel), `tokenizer/`
(a word-level tokenizer built here) and `transformer/` (WanTransformer3DModel)."""
import os

TEXT_DIM = 32
WORDS = ("a red blue green circle square triangle moves left right up down fast slowly the ball "
         "dog runs jumps in park").split()


def build_tokenizer(path: str):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                 unk_token="<unk>")
  fast.save_pretrained(path)
  return len(vocab)


def tiny_vae(version: str = "2.1", seed: int = 0):
  """A tiny `AutoencoderKLWan`: the Wan 2.1 layout (16 channels, 8x spatial; diffusers' own test
  config) or the Wan 2.2 one (48 channels, 16x spatial: a residual VAE over 2x2 pixel patches),
  with its own per-channel latent mean and std."""
  import numpy as np
  import torch
  from diffusers import AutoencoderKLWan
  torch.manual_seed(seed)
  if version == "2.1":
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])
  rng = np.random.default_rng(seed)
  return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1],
                          num_res_blocks=1, temperal_downsample=[False, True, True],
                          is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                          scale_factor_spatial=16,
                          latents_mean=[float(v) for v in rng.normal(scale=0.1, size=48)],
                          latents_std=[float(v) for v in rng.uniform(0.5, 2.0, size=48)])


def build_wan_folder(root: str, seed: int = 0, vae: str = "2.1") -> str:
  """Writes the folder (with the Wan `vae` version's VAE) and returns its path."""
  import torch
  from diffusers import WanTransformer3DModel
  from transformers import UMT5Config, UMT5EncoderModel
  torch.manual_seed(seed)
  vocab = build_tokenizer(os.path.join(root, "tokenizer"))
  tiny_vae(vae, seed).save_pretrained(os.path.join(root, "vae"))
  UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                              num_heads=4, relative_attention_num_buckets=8)).save_pretrained(
                                  os.path.join(root, "text_encoder"))
  WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                        in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=256,
                        ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).save_pretrained(
                            os.path.join(root, "transformer"))
  return root


def tiny_transformer(seed: int, **config):
  """A tiny `WanTransformer3DModel` (2 blocks, width 24) whose every tensor is moved off its
  initial value (norm weights start at 1, biases at 0)."""
  import torch
  from diffusers import WanTransformer3DModel
  torch.manual_seed(seed)
  kw = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
            out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
  model = WanTransformer3DModel(**{**kw, **config}).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def build_a14b_folder(root: str, boundary_ratio: float = 0.875, shift: float = 3.0,
                      seed: int = 0) -> str:
  """A Wan 2.2 A14B-layout pipeline folder of tiny random models, written by diffusers'
  `WanPipeline.save_pretrained`: `model_index.json` (with `boundary_ratio`), `transformer/` (the
  high-noise expert), `transformer_2/` (the low-noise one), `vae/`, `text_encoder/`,
  `tokenizer/`, `scheduler/` (flow-matching Euler). Returns `root`."""
  import tempfile
  from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline)
  from transformers import AutoTokenizer, UMT5EncoderModel
  with tempfile.TemporaryDirectory() as parts:
    build_wan_folder(parts, seed)
    pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(f"{parts}/tokenizer"),
                       text_encoder=UMT5EncoderModel.from_pretrained(f"{parts}/text_encoder"),
                       vae=AutoencoderKLWan.from_pretrained(f"{parts}/vae"),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                       transformer=tiny_transformer(seed + 1),
                       transformer_2=tiny_transformer(seed + 2), boundary_ratio=boundary_ratio)
    pipe.save_pretrained(root)
  return root


IMAGE_DIM = 20  # The tiny CLIP vision model's width (Wan 2.1 I2V's image_dim).


def tiny_clip():
  """`(CLIPImageProcessor, CLIPVisionModel)`: 32 x 32 inputs, 8 x 8 patches (17 tokens), width
  IMAGE_DIM; the Wan 2.1 I2V pipeline takes its second-to-last hidden states."""
  from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
  processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  model = CLIPVisionModel(CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=32,
                                           num_hidden_layers=2, num_attention_heads=2,
                                           image_size=32, patch_size=8)).eval()
  return processor, model


def build_i2v_pipeline(root: str, kind: str, seed: int = 0, shift: float = 3.0):
  """A tiny image-to-video pipeline written by diffusers to `root` and returned: kind 'wan2.1'
  (WanImageToVideoPipeline: 36 -> 16 channels, the CLIP image branch) or 'ti2v' (Wan 2.2 TI2V:
  the Wan 2.2 VAE, 48 channels, `expand_timesteps`)."""
  import tempfile
  from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
  from diffusers import AutoencoderKLWan
  from transformers import AutoTokenizer, UMT5EncoderModel
  with tempfile.TemporaryDirectory() as parts:
    build_wan_folder(parts, seed, vae="2.1" if kind == "wan2.1" else "2.2")
    shared = dict(tokenizer=AutoTokenizer.from_pretrained(f"{parts}/tokenizer"),
                  text_encoder=UMT5EncoderModel.from_pretrained(f"{parts}/text_encoder"),
                  vae=AutoencoderKLWan.from_pretrained(f"{parts}/vae"),
                  scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    if kind == "wan2.1":
      processor, clip = tiny_clip()
      pipe = WanImageToVideoPipeline(
          image_processor=processor, image_encoder=clip, transformer=tiny_transformer(
              seed + 1, in_channels=36, out_channels=16, image_dim=IMAGE_DIM, added_kv_proj_dim=24),
          **shared)
    else:
      pipe = WanImageToVideoPipeline(transformer=tiny_transformer(seed + 1, in_channels=48,
                                                                  out_channels=48),
                                     expand_timesteps=True, **shared)
    pipe.save_pretrained(root)
  return pipe

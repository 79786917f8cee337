"""The Wan DenseDPO step as a PyTorch user runs it today: the peer `scaled_step` is compared with.

    python -m benchmarks.wan_peer                                  # Wan 2.1 1.3B, 81 x 480 x 832
    python -m benchmarks.wan_peer --modes eager compiled --steps 3
    python -m benchmarks.wan_peer --check                          # parity with ours (CPU, tiny)

The peer: diffusers' `WanTransformer3DModel` built from the preset's config (random weights), a
PEFT LoRA of our rank, alpha and targets (the ten projections of every block) added with
`add_adapter`, the reference pass as the same model with its adapters disabled
(`disable_adapters()`, under `no_grad`), PyTorch SDPA attention (flash / cuDNN on a GPU),
gradient checkpointing (`enable_gradient_checkpointing()`), bf16 autocast over a float32 base
and adapter, gradient clipping at 1 and AdamW on the adapter; `compiled` adds `torch.compile`
of the transformer. One step: t and one noise shared by both members (as ours), the policy on
the 2B videos `[a; b]`, the reference on the same, per-frame errors, the dense segment DPO loss
of `densedpo_jax.objectives.losses.dense_dpo_loss` (segment granularity, its defaults), backward,
clip, AdamW. The batch is `timing.dense_batch`'s: labels +1, -1, 0 by latent frame in
segments of 3 frames.

`--check` gives ours and the peer the same tiny model: the same base weights
(`wan_weights.to_diffusers`), the same random non-zero adapter (`wan_weights.lora_to_peft`), the
same batch, t and noise, and compares the loss and every adapter gradient in float32. Run it
before believing a timing: a peer that computes something else is no peer.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

GIB = 2 ** 30


def dense_dpo_loss(err_theta_a, err_ref_a, err_theta_b, err_ref_b, labels, segment_ids, beta):
  """`losses.dense_dpo_loss(..., granularity='segment')` in PyTorch: errors `[B, T]`, frame
  labels `[B, T]` in {+1, -1, 0}, `segment_ids [B, T]` in `[0, T)`; a scalar."""
  import torch
  t, real = labels.shape[-1], err_theta_a.dtype
  onehot = (segment_ids[..., None] == torch.arange(t, device=labels.device)).to(real)  # [B, T, S]
  counts = onehot.sum(1)
  mean = lambda v: torch.einsum("bt,bts->bs", v.to(real), onehot) / counts.clamp(min=1)
  valid = counts > 0
  n_pos, n_neg = mean(labels == 1), mean(labels == -1)
  seg = torch.where(valid & (n_pos == 1), 1.0, torch.where(valid & (n_neg == 1), -1.0, 0.0))
  diff = (mean(err_theta_a) - mean(err_ref_a)) - (mean(err_theta_b) - mean(err_ref_b))
  z = -(beta / 2) * seg * diff
  nontie = seg != 0
  unit = torch.where(nontie, -torch.nn.functional.logsigmoid(z), torch.zeros_like(z))
  n_pair = nontie.sum(-1)
  pair_loss = unit.sum(-1) / n_pair.clamp(min=1)
  has_pair = n_pair > 0
  return torch.where(has_pair, pair_loss, torch.zeros_like(pair_loss)).sum() / has_pair.sum().clamp(min=1)


def build_peer(cfg, device: str, compiled: bool, checkpointing: bool = True, base=None):
  """`(transformer, forward, optimizer)`: the diffusers model with a PEFT LoRA of `cfg.lora`;
  `base`: a state dict of base weights (default: diffusers' random initialisation)."""
  import torch
  from diffusers import WanTransformer3DModel
  from peft import LoraConfig
  from densedpo_jax.model import wan_weights
  config = {k: v for k, v in wan_weights.diffusers_config(cfg).items() if not k.startswith("_")}
  model = WanTransformer3DModel(**config)
  if base is not None:
    model.load_state_dict(base, strict=True)
  model = model.to(device)
  model.requires_grad_(False)
  model.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha or cfg.lora.rank,
                               init_lora_weights=True,
                               target_modules=sorted(set(wan_weights.LORA_MODULES.values()))))
  if checkpointing:
    model.enable_gradient_checkpointing()
  adapter = [p for n, p in model.named_parameters() if "lora_" in n]
  for p in adapter:
    p.requires_grad_(True)
  optimizer = torch.optim.AdamW(adapter, lr=1e-4, weight_decay=0.0)
  forward = torch.compile(model) if compiled else model
  return model, forward, optimizer


def peer_loss(model, forward, batch, t, eps, beta: float, autocast: bool):
  """`(loss, (v_theta, v_ref))`: the DenseDPO loss of one batch (torch tensors: latents
  `[B, C, T, H, W]`, text `[B, L, D]` zero-padded, labels and segment ids `[B, T]`, t `[B]`, one
  noise `eps`) and the policy's and reference's velocities on `[a; b]`."""
  import torch
  a, b = _wide(batch["latent_a"]), _wide(batch["latent_b"])
  x0 = torch.cat([a, b])
  noise = torch.cat([eps, eps])
  tt = torch.cat([t, t])
  x_t = (1 - tt[:, None, None, None, None]) * x0 + tt[:, None, None, None, None] * noise
  target = noise - x0
  text = torch.cat([batch["text"], batch["text"]])
  ctx = (torch.autocast(x0.device.type, dtype=torch.bfloat16) if autocast
         else torch.autocast(x0.device.type, enabled=False))
  with ctx:
    v_theta = forward(x_t, tt * 1000, text, return_dict=False)[0]
  with torch.no_grad():
    model.disable_adapters()
    try:
      with ctx:
        v_ref = forward(x_t, tt * 1000, text, return_dict=False)[0]
    finally:
      model.enable_adapters()
  err = lambda v: (_wide(v) - target).square().mean(dim=(1, 3, 4))  # [2B, T]
  e_theta, e_ref = err(v_theta), err(v_ref)
  n = a.shape[0]
  loss = dense_dpo_loss(e_theta[:n], e_ref[:n], e_theta[n:], e_ref[n:], batch["labels"],
                        batch["segment_ids"], beta)
  return loss, (v_theta, v_ref)


def _wide(x):
  """`x` in float32 when it is in a 16-bit float (autocast's output), else as it is."""
  import torch
  return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def torch_batch(batch, cfg, device):
  """`timing.dense_batch`'s batch (JAX arrays) as the peer's torch tensors."""
  import torch
  f = lambda x: torch.from_numpy(np.array(x, np.float32)).to(device)
  mask = np.asarray(batch["text_mask"])
  text = np.where(mask[..., None], np.asarray(batch["text_emb"], np.float32), 0.0)
  pad = max(0, cfg.text_len - text.shape[1])
  text = np.pad(text, ((0, 0), (0, pad), (0, 0)))
  return {"latent_a": f(batch["latent_a"]).permute(0, 4, 1, 2, 3).contiguous(),
          "latent_b": f(batch["latent_b"]).permute(0, 4, 1, 2, 3).contiguous(),
          "text": f(text), "labels": torch.from_numpy(np.asarray(batch["labels"], np.int64)).to(device),
          "segment_ids": torch.from_numpy(np.asarray(batch["segment_ids"], np.int64)).to(device)}


def check(seed: int = 0) -> dict:
  """Ours and the peer on one tiny model (float32, CPU): the same base weights, the same random
  non-zero adapter, batch, t and noise. Returns both losses, the policy's and the reference's
  velocities' largest difference over their largest magnitude (`v_theta_rel`, `v_ref_rel`), the
  adapter gradients' (`grad_rel`, each tensor's max difference over its max), which adapter
  tensors got no gradient in the peer, and whether any base weight got one."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import torch
  from benchmarks.timing import dense_batch
  from densedpo_jax.model import LoRAConfig, build, get_model_config, wan_weights
  from densedpo_jax.model.registry import abstract_variables
  from densedpo_jax.objectives import dpo, flow
  cfg = get_model_config("wan", "wan2.1-t2v-1.3b", width=24, depth=2, num_heads=2, ffn_dim=32,
                         text_dim=32, text_len=8, lora=LoRAConfig(rank=4, alpha=8.0))
  key = jax.random.key(seed)
  leaves, treedef = jax.tree_util.tree_flatten(nn.unbox(abstract_variables(cfg)))
  variables = jax.tree_util.tree_unflatten(treedef, [
      0.1 * jax.random.normal(k, leaf.shape) for k, leaf in zip(jax.random.split(key, len(leaves)),
                                                                 leaves)])
  batch = dense_batch(2, (6, 4, 6), cfg.in_channels, 5, cfg.text_dim, key)
  batch = {k: (v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v) for k, v in batch.items()}
  # Segments of 3 frames with one label each (a segment whose frames disagree is a tie).
  batch["labels"] = jnp.array([[1, 1, 1, -1, -1, -1], [0, 0, 0, -1, -1, -1]], jnp.int8)
  batch["segment_ids"] = jnp.array([[0, 0, 0, 1, 1, 1]] * 2, jnp.int32)
  kt, ke = jax.random.split(jax.random.fold_in(key, 1))
  t = jax.random.uniform(kt, (2,), minval=0.05, maxval=0.95)
  eps = jax.random.normal(ke, batch["latent_a"].shape)
  beta, module = 500.0, build(cfg)

  def ours(lora):
    loss, _ = dpo.dpo_loss(module.apply, variables["params"], lora,
                           dict(batch, t=t, eps_a=eps, eps_b=eps), None, beta=beta, dense=True,
                           granularity="segment")
    return loss
  loss, grads = jax.value_and_grad(ours)(variables["lora"])
  x0 = jnp.concatenate([batch["latent_a"], batch["latent_b"]])
  inputs = (flow.add_noise(x0, jnp.concatenate([eps, eps]), jnp.concatenate([t, t])),
            jnp.concatenate([t, t]), jnp.concatenate([batch["text_emb"]] * 2),
            jnp.concatenate([batch["text_mask"]] * 2))
  v_ours = [np.asarray(module.apply(variables, *inputs, lora_enabled=on)) for on in (True, False)]

  torch.manual_seed(seed)
  base = {k: torch.from_numpy(np.array(v, np.float32))
          for k, v in wan_weights.to_diffusers(variables["params"], cfg).items()}
  model, forward, _ = build_peer(cfg, "cpu", compiled=False, checkpointing=False, base=base)
  params = dict(model.named_parameters())

  def peft_name(name: str) -> str:  # '.blocks.0.attn1.to_q.lora_A.weight' -> the PEFT parameter.
    module, factor = name.lstrip(".").rsplit(".lora_", 1)
    return f"{module}.lora_{factor.split('.')[0]}.default.weight"
  with torch.no_grad():
    for name, value in wan_weights.lora_to_peft(variables["lora"], cfg, prefix="")[0].items():
      params[peft_name(name)].copy_(torch.from_numpy(np.array(value)))
  loss_t, v_peer = peer_loss(model, forward, torch_batch(batch, cfg, "cpu"),
                             torch.from_numpy(np.array(t)),
                             torch.from_numpy(np.array(eps)).permute(0, 4, 1, 2, 3).contiguous(),
                             beta, autocast=False)
  loss_t.backward()
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  v_rel = [rel(v.detach().permute(0, 2, 3, 4, 1).numpy(), o) for v, o in zip(v_peer, v_ours)]
  grad_rel, no_grad = 0.0, []
  for name, g in wan_weights.lora_to_peft(grads, cfg, prefix="")[0].items():
    theirs = params[peft_name(name)].grad
    if theirs is None or not theirs.abs().max() > 0:
      no_grad.append(peft_name(name))
      continue
    grad_rel = max(grad_rel, rel(theirs.numpy(), g))
  base_grads = [n for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None]
  return {"loss_ours": float(loss), "loss_peer": float(loss_t.detach()), "v_theta_rel": v_rel[0],
          "v_ref_rel": v_rel[1], "grad_rel": grad_rel, "no_grad": no_grad,
          "base_has_grad": bool(base_grads), "depth": cfg.depth,
          "adapter_tensors": 2 * len(wan_weights.LORA_MODULES) * cfg.depth}


def time_peer(args, mode: str) -> dict:
  """Median step seconds and peak memory of the peer in `mode` ('eager' | 'compiled')."""
  import jax
  import torch
  from benchmarks.timing import dense_batch
  from configs import common
  from densedpo_jax.training.builders import model_config
  device = "cuda" if torch.cuda.is_available() else "cpu"
  c = common.base()
  c.loss = "dense_dpo"
  common.paper_scale(c, args.model)
  c.model.attention_impl = "blockwise"  # Our attention choice plays no part in the peer's.
  if args.tiny:  # A smoke run of this tool on a CPU, not a measurement.
    c.model.update(width=64, depth=2, num_heads=2, ffn_dim=128, text_dim=64)
    c.lora.rank, c.lora.alpha = 16, 16.0
  cfg = model_config(c).replace(text_len=args.text_len)
  model, forward, optimizer = build_peer(cfg, device, compiled=mode == "compiled")
  batch = dense_batch(args.pairs, args.latent, cfg.in_channels, args.text_len, cfg.text_dim,
                     jax.random.key(0))
  tb = torch_batch(batch, cfg, device)
  # configs/common.py's DenseDPO granularity, as scaled_step runs ours: one unit a frame.
  tb["segment_ids"] = torch.arange(args.latent[0], device=device).repeat(args.pairs, 1)
  adapter = [p for p in model.parameters() if p.requires_grad]
  gen = torch.Generator(device).manual_seed(0)

  def step():
    t = torch.sigmoid(torch.randn(args.pairs, device=device, generator=gen))
    eps = torch.randn(tb["latent_a"].shape, device=device, generator=gen)
    loss, _ = peer_loss(model, forward, tb, t, eps, 500.0, autocast=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(adapter, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step()  # The first step compiles (compiled mode) and warms up.
  sync()
  first_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - start)
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else float("nan")
  return {"mode": mode, "first_s": first_s, "step_s": statistics.median(times), "peak": peak,
          "loss": float(loss.detach())}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wan1.3b", help="configs/dense.py arg")
  parser.add_argument("--latent", default="21,60,104", help="latent frames,height,width")
  parser.add_argument("--text_len", type=int, default=512)
  parser.add_argument("--pairs", type=int, default=1)
  parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                      choices=["eager", "compiled"])
  parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
  parser.add_argument("--check", action="store_true", help="parity with ours on a tiny model")
  parser.add_argument("--tiny", action="store_true", help="the model at width 64, depth 2: a "
                      "smoke run of the timing on a CPU")
  args = parser.parse_args(argv)
  if args.check:
    r = check()
    print(f"parity (float32, tiny): policy velocity max rel {r['v_theta_rel']:.1e}, reference "
          f"{r['v_ref_rel']:.1e}; loss ours {r['loss_ours']:.6f} peer {r['loss_peer']:.6f}; "
          f"adapter gradients max rel {r['grad_rel']:.1e}; adapter tensors without a gradient "
          f"{len(r['no_grad'])} of {r['adapter_tensors']}")
    return
  import torch
  args.latent = tuple(int(v) for v in args.latent.split(","))
  tokens = args.latent[0] * (args.latent[1] // 2) * (args.latent[2] // 2)
  rows = []
  for mode in args.modes:
    rows.append(time_peer(args, mode))
    print(f"[{mode}] first step {rows[-1]['first_s']:.0f} s, step {rows[-1]['step_s']:.2f} s, "
          f"loss {rows[-1]['loss']:.4f}", flush=True)
  name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
  print(f"\ndevice: {name}, torch {torch.__version__}; model {args.model}, latent "
        f"{args.latent} ({tokens:,} tokens a video), text {args.text_len}, {args.pairs} pair(s); "
        f"diffusers WanTransformer3DModel + PEFT LoRA, SDPA, gradient checkpointing, bf16 "
        f"autocast")
  print("| peer | first step s | step s | video tokens/s | peak GiB |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['mode']} | {r['first_s']:.0f} | {r['step_s']:.2f} | "
          f"{2 * args.pairs * tokens / r['step_s']:,.0f} | {r['peak'] / GIB:.1f} |")


if __name__ == "__main__":
  main()

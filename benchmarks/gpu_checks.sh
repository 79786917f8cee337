#!/usr/bin/env bash
# The project's GPU checks on one GPU, each one's output in <out>/<name>.log:
#
#   bash benchmarks/gpu_checks.sh <out_dir> [check ...]        # default: all, in this order
#   bash benchmarks/gpu_checks.sh --dry-run <out_dir> [check ...]   # print the commands only
#
#   tests            tests/test_gpu.py: cuDNN attention with text masks, VideoDiT in bf16
#   vs_pytorch_bf16  our DPO and flow-matching steps against eager PyTorch on the GPU, tiny and
#                    mid, bf16 compute (cuDNN attention; torch autocast + SDPA), then the pair
#                    sampler against PyTorch's
#   objectives_bf16  flow matching / Flow-DPO / DenseDPO at tiny in bf16: step ratios, MFU
#   scaled_step      the Wan 2.1 1.3B DenseDPO step at 81 x 480 x 832: time, MFU, peak memory
#                    against the memory planner
#   attention_32k    cuDNN and blockwise attention at Wan 2.1's heads, 32,760 tokens
#   vs_pytorch_f32   vs_pytorch in float32 (TF32 matmuls in both, as JAX's default)
#   peer_check       benchmarks.wan_peer --check: the PyTorch peer computes our step (tiny)
#   wan_peer         the same 1.3B step at 81 x 480 x 832 as a PyTorch user runs it: diffusers
#                    + PEFT LoRA 128, SDPA, gradient checkpointing, bf16 autocast, AdamW; eager
#                    and torch.compile (compare with scaled_step: same GPU, same run)
#   scaled_ti2v      the Wan 2.2 TI2V-5B step at its native 121 x 704 x 1280 (31 x 44 x 80 latent)
#   wan_pairs        guided pairs of Wan 2.1 1.3B at 81 x 480 x 832, CFG 5: our sampler against
#                    diffusers' WanPipeline, seconds a pair and pairs an hour
#   wan_encode       encode's Wan 2.1 VAE and umT5-XXL (random weights) at 81 x 480 x 832, bf16
#   scaled_14b       the Wan 2.1 14B step (bf16 base) at 81 x 480 x 832 on one GPU; the planner
#                    says 107 GiB, over 80 GB: it may run out of memory there, which is a result
#
# The speed issue's run, within 8 minutes on an H100 or H200:
#   bash benchmarks/gpu_checks.sh OUT peer_check scaled_step wan_peer wan_pairs wan_encode \
#     scaled_ti2v scaled_14b
# The peer needs diffusers and PEFT: where the machine reaches no package index, make their
# wheels here first (`python -m benchmarks.peer_wheels --out=wheels/peer`, 46 MiB) and carry
# wheels/peer; this script installs what is missing from them (pip --no-index).
#
# Needs jax with CUDA, torch with CUDA and the project's core packages (`pip install -e .` or,
# on an image that has jax, flax, optax and torch, wheels of ml_collections, clu, grain and
# array_record on PYTHONPATH). TensorFlow and TFDS are not needed.
# Each check has its own time limit (seconds on an H100, where compiling our tiny DPO step takes
# about 17 s), so one that hangs or runs out of memory costs only itself.
set -u
dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi
out=${1:?usage: gpu_checks.sh [--dry-run] <out_dir> [check ...]}
shift
checks=${*:-tests vs_pytorch_bf16 objectives_bf16 scaled_step attention_32k vs_pytorch_f32}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

run() {  # run <name> <seconds> <command...>
  local name=$1 limit=$2; shift 2
  if [ $dry = 1 ]; then echo "$name (limit $limit s): $*"; return; fi
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   rc $?, $((SECONDS - start)) s"
  grep -E '^\||^device|^guided|^pairs/s|parity|^\[|max error|passed|failed|Error' \
    "$out/$name.log" | tail -40
}

if [ $dry = 0 ]; then
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
  if [ -d wheels/peer ] && ! python3 -c "import diffusers, peft" 2>/dev/null; then
    pins=$(cd wheels/peer && ls diffusers-*.whl peft-*.whl | sed -E 's/^([a-z]+)-([^-]+)-.*/\1==\2/')
    python3 -m pip install -q --no-index --find-links wheels/peer $pins 2>&1 | tail -3
  fi
fi
for check in $checks; do
  case $check in
    # tests/conftest.py pins JAX to the CPU unless told otherwise.
    tests) JAX_PLATFORMS=cuda run tests 90 python3 -m pytest -q -s -rA tests/test_gpu.py ;;
    # Both frameworks share the GPU in the comparisons: JAX must not take 75% of it up front.
    vs_pytorch_bf16) XLA_PYTHON_CLIENT_PREALLOCATE=false run "$check" 200 \
      python3 -m benchmarks.vs_pytorch --dtype bfloat16 --presets tiny mid --steps 10
      XLA_PYTHON_CLIENT_PREALLOCATE=false run sampler 60 python3 -m benchmarks.vs_pytorch_sampler ;;
    vs_pytorch_f32) XLA_PYTHON_CLIENT_PREALLOCATE=false run "$check" 240 \
      python3 -m benchmarks.vs_pytorch --dtype float32 --presets tiny mid \
      --steps 10 ;;
    objectives_bf16) run "$check" 120 python3 -m benchmarks.step_objectives --presets tiny \
      --dtype bfloat16 --steps 20 ;;
    scaled_step) run "$check" 120 python3 -m benchmarks.scaled_step --attention cudnn --steps 3 ;;
    attention_32k) run "$check" 150 python3 -m benchmarks.attention_impls --tokens 32760 \
      --impls cudnn blockwise ;;
    peer_check) run "$check" 60 python3 -m benchmarks.wan_peer --check ;;
    wan_peer) run "$check" 180 python3 -m benchmarks.wan_peer --modes eager compiled --steps 3 ;;
    wan_pairs) run "$check" 150 python3 -m benchmarks.wan_pairs --cfg_scale 5 --calls 4 ;;
    wan_encode) run "$check" 90 python3 -m benchmarks.wan_encode ;;
    scaled_ti2v) run "$check" 100 python3 -m benchmarks.scaled_step --model wan2.2-ti2v-5b \
      --latent 31,44,80 --attention cudnn --steps 2 ;;
    scaled_14b) run "$check" 120 python3 -m benchmarks.scaled_step --model wan14b \
      --attention cudnn --steps 2 ;;
    *) echo "unknown check $check" >&2; exit 2 ;;
  esac
done

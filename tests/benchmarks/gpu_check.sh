#!/usr/bin/env bash
# The prepared GPU check: run from the repository root on a lent GPU machine (one H200, 16 cores,
# an image with torch, transformers, timm, torchvision, h5py, safetensors, typer, rich,
# huggingface_hub, pillow; no network). Finishes in about 5-8 minutes; everything lands in
# ${OUT:-/tmp/gpu-check}: parity.json, speed-<case>.json, <case> GPU utilisation, log.txt.
#
#   bash tests/benchmarks/gpu_check.sh            # all of it
#   CASES="resnet50,dinov2-small-bf16" bash tests/benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-check}/gpu_check"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error BBX_CACHE="$OUT/cache"
# bbx from the working tree, without the network: an editable install if pip can, else the path
if ! pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python -c "import torch, bbx; print('torch', torch.__version__, 'cuda', torch.cuda.get_device_name(0), 'bbx', bbx.__file__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m bbx info --system

echo "== 1. CUDA vs CPU parity, every family"
timeout 180 python tests/benchmarks/gpu_check.py parity "$OUT" || echo "parity: failures or timeout (see above)"

echo "== 2. end to end, bbx and the transformers recipe on the GPU"
CASES="${CASES:-resnet50,resnet50-bf16,swin-tiny,swin-tiny-bf16,convnext-tiny-all,convnext-tiny-all-bf16,dinov2-small,dinov2-small-bf16}"
for case in ${CASES//,/ }; do
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$case.csv" &
  sampler=$!
  timeout 120 python tests/benchmarks/compare_transformers.py --device cuda --cases "$case" --images 256 \
    --threads 16 --workdir /tmp/bbx-gpu-bench --json-out "$OUT/speed-$case.json" --bbx-args="--workers 12" \
    || echo "$case: failed or timed out"
  kill "$sampler" 2>/dev/null
  python tests/benchmarks/gpu_check.py util "$OUT" "$OUT/$case.csv" "speed-$case.util.json"
done

echo "== summary"
python tests/benchmarks/gpu_check.py summary "$OUT"

#!/usr/bin/env bash
# GPU checks, unattended, in under 8 minutes on one CUDA card (run from the repository root
# after `python -m pip install -e .`):
#   1. the batched CFG sampler on the 112-px DiT-B config (random weights), bf16: img/s and
#      achieved TFLOP/s against a bf16 matmul measured in the same run (bench/sampler.py);
#   2. the same with the default sampler settings' step count (10 DPM-Solver++ steps);
#   3. training throughput of stage 1 (fr_lfw_small) and stage 2 (dit_b) through the real
#      trainers on generated faces (bench/train_speed.py);
#   4. when LFW-112 is at $VIGFACE_LFW112 (default ../shared/data/lfw112), the 112-px JiT
#      generator recipe at GPU size (vigface/configs/dit_lfw112_jit_gpu.yaml) for 6 minutes,
#      then its sampler against the 32-px demo in one run. Needs the stage-1 model of the
#      bundled demo, which the checkout carries.
# Each step has its own time limit; one JSON line per step ends in $OUT (or ./runs) as gpu.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
run() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "exit $? after $name" | tee -a "$out/gpu.txt"
  tail -n 1 "$out/$name.log" | tee -a "$out/gpu.jsonl"
}
run sampler_dit_b_25 200 python bench/sampler.py --dit-config vigface/configs/dit_b.yaml \
  --images 512 --batch-size 128 --naive-images 4 --steps 25 --precision bf16
run sampler_dit_b_10 90 python bench/sampler.py --no-compile --dit-config vigface/configs/dit_b.yaml \
  --images 512 --batch-size 128 --naive-images 4 --steps 10 --precision bf16
run train_speed 180 python bench/train_speed.py --fr-config vigface/configs/fr_lfw_small.yaml \
  --dit-config vigface/configs/dit_b.yaml --steps 200 --device cuda
lfw="${VIGFACE_LFW112:-../shared/data/lfw112}"
if [ -d "$lfw/train" ]; then
  run train_jit112 480 vigface train-dit --config vigface/configs/dit_lfw112_jit_gpu.yaml \
    --data "$lfw/train" --fr model_store/models/demo/fr --out "$out/jit112_gpu"
  run sampler_jit112 120 python bench/sampler.py --model "$out/jit112_gpu" --against demo \
    --images 512 --batch-size 128 --naive-images 4 --steps 10 --guidance 1.75 --precision bf16
else
  echo "no LFW-112 at $lfw: the 112-px generator step is skipped" | tee -a "$out/gpu.txt"
fi

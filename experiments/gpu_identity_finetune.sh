#!/usr/bin/env bash
# Issue 16's identity lever on a lent GPU: two margin fine-tunes of the bundled demo DiT run
# side by side on one card (the model is small; the card is far from busy with one), each
# time-boxed by max_minutes. Inputs travel with the working tree:
#   .gpu/train32.pack, .gpu/train32_index.csv   LFW-112 train box-resized to 32 px as lossless
#   .gpu/train32_landmarks.csv                  WebP bytes in one file (name,offset,length per
#                                               line): the DiT's own training input, made here
#                                               from ../shared and never committed; unpacked to
#                                               an ImageFolder in /tmp first
#   .gpu/whl/                                   diffusers, pydantic and what they need
# Usage: experiments/gpu_identity_finetune.sh ["name key=value ..." ...]  (config overrides per run)
# Outputs in $OUT: per run the EMA DiT in fp16 (as the bundled entry stores it; the demo's
# dit/config.json describes it) and its training log. Judge them on the CPU afterwards (README: identity lever).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 - <<'PY' || exit 4
from pathlib import Path
data = Path(".gpu/train32.pack").read_bytes()
for line in Path(".gpu/train32_index.csv").read_text().splitlines():
    name, off, n = line.rsplit(",", 2)
    p = Path("/tmp/train32") / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data[int(off) : int(off) + int(n)])
PY
cp .gpu/train32_landmarks.csv /tmp/train32_landmarks.csv
train() {  # name, extra overrides...
  local name=$1
  shift
  PYTHONUNBUFFERED=1 python3 - "$name" "$@" > "$out/$name.log" 2>&1 <<'PY'
import sys, json, torch
from safetensors.torch import save_file
from vigface.config import TrainDiTConfig, load_config, parse_overrides
from vigface.training.dit import train_dit
name, sets = sys.argv[1], sys.argv[2:]
cfg = load_config("vigface/configs/dit_lfw_demo_margin_gpu.yaml", TrainDiTConfig, parse_overrides(sets))
gen = train_dit(cfg, "/tmp/train32", "model_store/models/demo/fr", f"/tmp/{name}", device="cuda", progress=False)
import os
out = os.environ.get("OUT", "runs/gpu")
state = {k: v.detach().half().contiguous().cpu() for k, v in gen.dit.state_dict().items()}
save_file(state, f"{out}/{name}_dit.safetensors")
print(json.dumps({"steps": gen.card["steps"], "minutes": gen.card["train_minutes"]}))
PY
  echo "exit $? after $name" >> "$out/gpu.txt"
  cp "/tmp/$name/train_log.jsonl" "$out/${name}_log.jsonl" 2>/dev/null
}
# runs: "name[ key=value ...]" per argument; by default the two of the first session's run
if [ $# -eq 0 ]; then
  set -- "margin02" "margin035 identity_margin=0.35 identity_margin_weight=2.0 seed=5"
fi
for spec in "$@"; do
  train $spec &
done
wait
cat "$out/gpu.txt"; tail -n 2 "$out"/*.log

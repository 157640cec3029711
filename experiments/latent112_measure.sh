#!/usr/bin/env bash
# Measure the bundled latent112 entry after a leg is folded into it, on issue 43's checks, as a
# user orders from it (every step writes runs/measure_latent/<tag>/*):
#   1. filters calibrated (pose guidance 1 and 3, the weights its card draws frontal and turned
#      faces at) and the identity drop rates at the default pose and at 35-60 degrees;
#   2. contact sheets (8 x 8, default pose and a 35-60 order) copied into the entry's grids/,
#      and the faces' measures on 256 draws (bench/face_quality.py);
#   3. must-show 1 on delivered files: a 32 x 8 order at the defaults, its JPEGs measured;
#   4. must-show 4: a 40 x 8 order at 35-60 degrees, shown yaw and the outside judge's
#      within-identity distance against a frontal draw (bench/pose_adherence.py);
#   5. must-show 5: accepted images per second against the demo (bench/sampler.py --accepted).
# Usage: experiments/latent112_measure.sh TAG     (JUDGE=1 adds the 200 x 10 outside judge)
set -euo pipefail
TAG=${1:?usage: $0 TAG}
DATA=${VIGFACE_LFW112:-../shared/data/lfw112}
ENTRY=model_store/models/latent112
OUT=runs/measure_latent/$TAG
TURNED='{"left_35_60": 0.5, "right_35_60": 0.5}'
mkdir -p "$OUT"
if ! python -c "import json,sys; sys.exit(0 if json.load(open('$ENTRY/model_card.json')).get('filters') else 1)"; then
  vigface calibrate --model latent112 --data "$DATA/train" --pose-guidance 1 --pose-guidance 3 \
    | tail -n 1 > "$OUT/calibrate.json"
fi
python bench/face_quality.py --model latent112 --threads 2 --out "$OUT/fq_default" | tail -n 1 > "$OUT/fq_default.json"
python bench/face_quality.py --model latent112 --threads 2 --pose "$TURNED" --out "$OUT/fq_turned" | tail -n 1 > "$OUT/fq_turned.json"
python bench/face_quality.py --model latent112 --threads 2 --identities 32 --seed 1 --out "$OUT/fq_256" | tail -n 1 > "$OUT/fq_256.json"
mkdir -p "$ENTRY/grids"
cp "$OUT/fq_default/latent112_sheet.png" "$ENTRY/grids/virtual_default_pose.png"
cp "$OUT/fq_turned/latent112_sheet.png" "$ENTRY/grids/virtual_35_60.png"
[ -f "$OUT/delivered/report.json" ] || vigface generate --model latent112 --identities 32 \
  --images-per-identity 8 --seed 0 --out "$OUT/delivered" 2>/dev/null | tail -n 1 > "$OUT/delivered.json"
python bench/face_quality.py --data "$OUT/delivered" --threads 2 --out "$OUT/fq_delivered" | tail -n 1 > "$OUT/fq_delivered.json"
vigface calibrate-drops --model latent112 --dataset "$OUT/delivered" | tail -n 1 > "$OUT/drops_default.json"
python bench/pose_adherence.py --model latent112 --resolution 112 --pose "$TURNED" \
  --identity-check --spares 40 --out "$OUT/pose" 2>"$OUT/pose.err" | grep -v '^{"out"' > "$OUT/pose.txt"
vigface calibrate-drops --model latent112 --dataset "$(ls -d "$OUT"/pose/latent112___left_35_60*)" \
  | tail -n 1 > "$OUT/drops_35_60.json"
python bench/sampler.py --accepted --model latent112 --against demo --identities 32 \
  --images-per-identity 4 --repeats 6 | tail -n 1 > "$OUT/accepted.json"
if [ "${JUDGE:-0}" = 1 ]; then
  vigface generate --model latent112 --identities 200 --images-per-identity 10 --seed 0 \
    --spares 80 --out "$OUT/judge_200x10" 2>/dev/null | tail -n 1 > "$OUT/judge_generate.json"
  vigface outside-judge --data "$OUT/judge_200x10" --model latent112 --heldout "$DATA/dev" \
    --real-data "$DATA/train" --update-card | tail -n 1 > "$OUT/judge.json"
fi
tail -n 3 "$OUT/pose.txt"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("fq_default", "fq_turned", "fq_256", "fq_delivered", "accepted", "drops_default", "drops_35_60"):
    f = out / f"{name}.json"
    print(name, f.read_text().strip()[:600] if f.is_file() else "(missing)")
PY

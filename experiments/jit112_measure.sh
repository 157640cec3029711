#!/usr/bin/env bash
# Measure a 112-px generator entry (a snapshot from experiments/dit_snapshot.py, or a finished
# run) on issue 30's checks, as a user would order from it:
#   1. filters calibrated on it (vigface calibrate) and the shown-pose reference on real faces;
#   2. shown pose for an order asking 35-60 degrees of yaw at pose guidance 1, 2 and 3, with the
#      judge's within-identity distance against a frontal draw of the same order;
#   3. the outside judge on 200 x 10 at the defaults against held-out real people at 112 px.
# Usage: experiments/jit112_measure.sh runs/models/jit112_b [pose guidances, default "1 2 3"]
# JUDGE=0 skips step 3. SPARES: spares of the 40-identity pose orders (default: the service's;
# the filters hold each pose to its own group's threshold since vigface calibrate draws them).
# Writes runs/measure112/<entry>/*.json (the last JSON line of each step).
set -euo pipefail
ENTRY=${1:?usage: $0 ENTRY [GUIDANCES]}
GUIDANCES=${2:-1 2 3}
DATA=${VIGFACE_LFW112:-../shared/data/lfw112}
OUT=runs/measure112/$(basename "$ENTRY")
mkdir -p "$OUT"
if ! python -c "import json,sys; sys.exit(0 if json.load(open('$ENTRY/model_card.json')).get('filters') else 1)"; then
  vigface calibrate --model "$ENTRY" --data "$DATA/train" | tail -n 1 > "$OUT/calibrate.json"
  vigface calibrate-pose --model "$ENTRY" --real "$DATA/dev" | tail -n 1 > "$OUT/calibrate_pose.json"
fi
for gp in $GUIDANCES; do
  python bench/pose_adherence.py --model "$ENTRY" --resolution 112 \
    --pose '{"left_35_60": 0.5, "right_35_60": 0.5}' --pose-guidance "$gp" --identity-check \
    ${SPARES:+--spares "$SPARES"} --out "$OUT/pose" 2>"$OUT/pose_gp$gp.err" \
    | grep -v '^{"out"' | tee "$OUT/pose_gp$gp.txt" | tail -n 3 \
    || { echo "pose at g_p $gp failed: see $OUT/pose_gp$gp.err" >&2; exit 1; }
done
if [ "${JUDGE:-1}" = 1 ] && [ ! -f "$OUT/judge.json" ]; then
  vigface generate --model "$ENTRY" --identities 200 --images-per-identity 10 --seed 0 \
    --out "$OUT/judge_200x10" 2>/dev/null | tail -n 1 > "$OUT/judge_generate.json"
  vigface outside-judge --data "$OUT/judge_200x10" --model "$ENTRY" --heldout "$DATA/dev" \
    --real-data "$DATA/train" --update-card | tail -n 1 > "$OUT/judge.json"
fi
[ -f "$OUT/judge.json" ] && python -c "import json; print(json.load(open('$OUT/judge.json'))['text'])"
exit 0

"""How good the independent judge is: dlib's face descriptor (``vigface/evaluation/judge.py``)
on the LFW-112 dev pairs, 10-fold, as ``vigface eval-fr`` scores our own FR model. The data
README quotes 98.77 % for dlib with its own detector boxes; the judge uses a fixed box on the
aligned crop. Optionally at a degraded resolution (``--resolution 32``: what the judge sees
of real people when it is calibrated for the 32-px demo generator). Last line: JSON.

    python bench/judge_verification.py --pairs ../shared/data/lfw112/dev_pairs.bin
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vigface.data import load_bin
from vigface.evaluation.judge import OutsideJudge, degrade
from vigface.evaluation.verification import verification_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="../shared/data/lfw112/dev_pairs.bin")
    ap.add_argument("--resolution", type=int, default=None)
    args = ap.parse_args()
    images, issame = load_bin(args.pairs)  # (N, 112, 112, 3) uint8
    if args.resolution:
        images = degrade(images, args.resolution)
    t0 = time.perf_counter()
    emb = OutsideJudge().embed(images)
    seconds = time.perf_counter() - t0
    m = verification_metrics(emb[0::2], emb[1::2], np.asarray(issame))
    m.update({"resolution": args.resolution or 112, "img_per_s": round(len(emb) / seconds, 1)})
    print(json.dumps(m))


if __name__ == "__main__":
    main()

"""Stage-1 benchmark: what the virtual prototypes cost in dev accuracy, and where they end.

Trains the same config with k virtual prototypes and with none (skipped when the output
folders already hold a finished model), evaluates both on the dev pairs and prints one JSON
line: accuracies, their difference, training minutes and the orthogonality check
mean max-cos(V->R) <= mean max-cos(R->R).

    python experiments/stage1_virtual_cost.py --data ../shared/data/lfw112 --runs runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "vigface" / "configs" / "fr_lfw_small.yaml"


def train(out: Path, data: Path, extra: list[str]) -> None:
    if (out / "model_card.json").is_file() and "dev_accuracy" in json.loads(
        (out / "model_card.json").read_text()
    ):
        return
    cmd = [
        "vigface",
        "train-fr",
        "--config",
        str(CONFIG),
        "--data",
        str(data / "train"),
        "--out",
        str(out),
        "--eval-pairs",
        str(data / "dev_pairs.bin"),
        *extra,
    ]
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lfw112"))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    args = ap.parse_args()
    with_v, without_v = args.runs / "fr_virtual", args.runs / "fr_no_virtual"
    train(with_v, args.data, [])
    train(without_v, args.data, ["--set", "head.num_virtual=0"])
    a = json.loads((with_v / "model_card.json").read_text())
    b = json.loads((without_v / "model_card.json").read_text())
    o = a["orthogonality"]
    result = {
        "dev_accuracy_virtual": a["dev_accuracy"],
        "dev_accuracy_no_virtual": b["dev_accuracy"],
        "accuracy_cost_points": round(100 * (b["dev_accuracy"] - a["dev_accuracy"]), 2),
        "train_minutes_virtual": a["train_minutes"],
        "train_minutes_no_virtual": b["train_minutes"],
        "num_virtual": a["num_virtual"],
        "v_to_r_mean": o["v_to_r"]["mean"],
        "r_to_r_mean": o["r_to_r"]["mean"],
        "virtual_farther_than_real": o["v_to_r"]["mean"] <= o["r_to_r"]["mean"],
    }
    print(json.dumps(result))
    sys.exit(0 if result["virtual_farther_than_real"] else 1)


if __name__ == "__main__":
    main()

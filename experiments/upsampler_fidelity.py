"""Does the cascade's upsampler put back detail that identifies people? Measured on real faces
of held-out identities (LFW-112 dev: no image of them trained anything), by the independent
judge (dlib), never by our own FR model.

Each dev image is box-downsampled to the generator's 32 px and delivered four ways, all
resized to 112 as the dataset writer does:

* ``32px_bicubic``: what a dataset of the DiT alone carries (today's delivery);
* ``32px_upsampler``: the upsampler's 64 px, conditioned on our FR's embedding of the 32-px
  face (a generated face gets its prototype instead);
* ``32px_upsampler_no_identity``: the same with the identity input zeroed
  (``--ablate-identity``);
* ``64px_real``: the real face box-downsampled to 64 (the ceiling for any 64-px generator);
* ``112px_real``: the original.

Per way: dlib verification on the 3,000 dev pairs (10-fold accuracy, TAR at FAR 1e-3), the
mean judge distance to the original's descriptor, PSNR against the real 64-px face, and
``detail``: the spectral energy above the 32-px Nyquist frequency as a share of the real
64-px face's (0 = none of the detail a 64-px photo has, 1 = as much).

    python experiments/upsampler_fidelity.py --model demo            # about 12 min on 2 cores

Prints a markdown table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model_store import resolve
from vigface.data.augment import to_model_input
from vigface.evaluation.judge import OutsideJudge
from vigface.evaluation.verification import verification_metrics
from vigface.generator.artifact import Generator
from vigface.sampling import initial_noise, to_uint8, upsampler_seed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"


def box(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in images]
    )  # fmt: skip


def detail(images: np.ndarray, reference: np.ndarray, cutoff: int) -> float:
    """Spectral energy beyond ``cutoff`` cycles per image (grey) relative to ``reference``."""

    def high(x):
        g = x.astype(np.float64).mean(-1)
        g -= g.mean(axis=(1, 2), keepdims=True)
        p = np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(1, 2))) ** 2
        n = g.shape[1]
        f = np.abs(np.arange(n) - n // 2)
        band = np.maximum(f[:, None], f[None, :]) > cutoff
        return p[:, band].sum()

    return float(high(images) / high(reference))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@torch.inference_mode()
def upsample(gen: Generator, low: np.ndarray, identity: bool, steps: int, batch: int) -> np.ndarray:
    out = []
    up = gen.upsampler
    for s in range(0, len(low), batch):
        chunk = low[s : s + batch]
        x = to_model_input(torch.from_numpy(chunk))
        w = F.normalize(gen.fr.embed(chunk, flip=False).float(), dim=1)
        if not identity:
            w = torch.zeros_like(w)
        seeds = [upsampler_seed(s + i) for i in range(len(chunk))]
        noise = torch.stack([initial_noise(seed, up.size) for seed in seeds])
        out.append(to_uint8(up.upsample(x, w, noise, steps)))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="generator entry with an upsampler/")
    ap.add_argument("--upsampler", type=Path, default=None, help="an upsampler folder instead")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--steps", type=int, default=None, help="default: the card's sampling_steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="first N pairs only (a smoke run)")
    ap.add_argument("--ablate-identity", action="store_true", help="also without the identity")
    args = ap.parse_args()
    gen = Generator.load(resolve(args.model))
    if args.upsampler is not None:
        from vigface.generator.upsampler import UpsamplerStage

        gen.upsampler = UpsamplerStage.load(args.upsampler)
    if gen.upsampler is None:
        raise SystemExit(f"{args.model} has no upsampler; pass --upsampler FOLDER")
    steps = args.steps or int(gen.upsampler.card.get("sampling_steps", 8))
    low_size, size = gen.upsampler.low_size, gen.upsampler.size
    with open(args.data / "dev_pairs.csv") as f:
        pairs = list(csv.DictReader(f))[: args.limit]
    paths = sorted({p[k] for p in pairs for k in ("path_a", "path_b")})
    index = {p: i for i, p in enumerate(paths)}
    a = np.array([index[p["path_a"]] for p in pairs])
    b = np.array([index[p["path_b"]] for p in pairs])
    issame = np.array([p["same"].lower() in ("1", "true") for p in pairs])
    orig = np.stack([np.asarray(Image.open(args.data / p).convert("RGB")) for p in paths])
    low, real_hi = box(orig, low_size), box(orig, size)
    t0 = time.perf_counter()
    ways = {
        f"{low_size}px_bicubic": low,  # the judge resizes to 112 by bicubic, as the writer
        f"{low_size}px_upsampler": upsample(gen, low, True, steps, args.batch),
    }
    sr_seconds = time.perf_counter() - t0
    if args.ablate_identity:
        ways[f"{low_size}px_upsampler_no_identity"] = upsample(gen, low, False, steps, args.batch)
    ways[f"{size}px_real"] = real_hi
    ways["112px_real"] = orig
    judge = OutsideJudge()
    ref = judge.embed(orig)
    bicubic_hi = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in low]
    )  # fmt: skip
    rows = {}
    for name, imgs in ways.items():
        at_size = imgs if imgs.shape[1] == size and name != f"{size}px_real" else None
        if name.endswith("bicubic"):
            at_size = bicubic_hi
        emb = ref if name == "112px_real" else judge.embed(imgs)
        m = verification_metrics(emb[a], emb[b], issame)
        rows[name] = {
            "accuracy": round(m["accuracy"], 4),
            "accuracy_std": round(m["accuracy_std"], 4),
            "tar_at_far_1e-3": round(m["tar_at_far_1e-3"], 4),
            "distance_to_original": round(float(np.linalg.norm(emb - ref, axis=1).mean()), 4),
            "psnr_vs_real_64": round(psnr(at_size, real_hi), 2) if at_size is not None else None,
            "detail": round(detail(at_size, real_hi, low_size // 2), 3)
            if at_size is not None
            else None,
        }
    print(f"\n{len(paths)} dev images, {len(pairs)} pairs; upsampler {steps} steps, "
          f"{len(paths) / sr_seconds:.1f} img/s on {torch.get_num_threads()} threads")  # fmt: skip
    print("| delivered as | dlib accuracy | TAR@FAR1e-3 | distance to original "
          "| PSNR vs real 64 | detail |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} | "
              f"{r['tar_at_far_1e-3']:.3f} | {r['distance_to_original']:.3f} | "
              f"{r['psnr_vs_real_64'] if r['psnr_vs_real_64'] is not None else '-'} | "
              f"{r['detail'] if r['detail'] is not None else '-'} |")  # fmt: skip
    print(json.dumps({"steps": steps, "images": len(paths), "pairs": len(pairs), "rows": rows,
                      "upsampler_img_per_s": round(len(paths) / sr_seconds, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()

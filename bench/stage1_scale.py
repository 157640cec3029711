"""Stage 1 at CASIA scale on this machine: a synthetic RecordIO, the streaming loader's rate
and the prototype head's memory (issue 31).

Three subcommands, each printing one JSON line last:

* ``make``: a CASIA-shaped insightface RecordIO drawn by a generator (default 20,000
  identities x 5 images from the rows of W_V, at a cheap sampler setting: the run proves the
  path, not the faces), written class by class as 112-px JPEGs without holding the set in
  memory::

      python bench/stage1_scale.py make --model runs/store/demo100k --out runs/casia_shaped

* ``loader``: decoded-and-augmented images per second of :mod:`vigface.data.streaming`
  for 0, 1 and 2 loader processes, and per process (one core each), in one run; with
  ``--gpu-img-per-s`` the cores a GPU step rate needs::

      python bench/stage1_scale.py loader --data runs/casia_shaped --input-size 112

* ``head``: peak memory (RSS, measured in a fresh process per setting) and time of one
  forward/backward/SGD step of the prototype head for ``--real`` + ``--virtual`` classes at
  each sample rate, beside the bytes of W, its gradient and momentum::

      python bench/stage1_scale.py head --real 10000 --virtual 100000 --rates 1.0,0.1
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def cmd_make(args) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from model_store import resolve
    from vigface.data.recordio import IRHeader, RecordWriter, pack
    from vigface.generator.artifact import Generator
    from vigface.sampling import ImageRequest, Sampler, image_seed

    torch.set_num_threads(args.threads)
    entry = Path(args.model) if Path(args.model).is_dir() else resolve(args.model)
    gen = Generator.load(entry)
    virtual = F.normalize(gen.fr.virtual_prototypes.float(), dim=1)
    if len(virtual) < args.classes:
        raise SystemExit(f"{entry} has {len(virtual)} virtual rows; --classes {args.classes}")
    poses = gen.pose_landmarks
    rng = np.random.default_rng(args.seed)
    sampler = Sampler(gen.dit, gen.scheduler, steps=args.steps, guidance=args.guidance,
                      batch_size=args.batch_size, autoencoder=gen.autoencoder)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_img = args.classes * args.per_class
    first_id = n_img + 1
    t0 = time.time()

    def requests():
        for c in range(args.classes):
            for j in range(args.per_class):
                lm = poses[rng.integers(len(poses))]
                yield ImageRequest(virtual[c].numpy(), lm, image_seed(args.seed, c, j)), c

    labels = [c for c in range(args.classes) for _ in range(args.per_class)]  # draw order
    key = 1
    with RecordWriter(out / "train.rec", out / "train.idx") as w:
        w.write(0, pack(IRHeader(2, np.array([first_id, first_id + args.classes]), 0), b""))
        for start, (_, images) in zip(
            range(0, n_img, args.batch_size), sampler.stream(r for r, _ in requests()),
            strict=True,
        ):  # fmt: skip
            for label, img in zip(labels[start : start + len(images)], images, strict=True):
                buf = io.BytesIO()
                big = Image.fromarray(img).resize((args.size, args.size), Image.BICUBIC)
                big.save(buf, format="JPEG", quality=90)
                w.write(key, pack(IRHeader(0, float(label), key), buf.getvalue()))
                key += 1
            if start // args.batch_size % 20 == 0:
                print(f"{key - 1}/{n_img} images, {time.time() - t0:.0f} s", flush=True)
        for c in range(args.classes):
            lo = 1 + c * args.per_class
            w.write(first_id + c, pack(IRHeader(2, np.array([lo, lo + args.per_class]),
                                                first_id + c), b""))  # fmt: skip
    (out / "property").write_text(f"{args.classes},{args.size},{args.size}\n")
    return {
        "images": n_img,
        "classes": args.classes,
        "draw_s": round(time.time() - t0, 1),
        "rec_bytes": (out / "train.rec").stat().st_size,
        "sampler": {"steps": args.steps, "guidance": args.guidance, "model": str(entry)},
    }


def _loader_rate(data: str, size: int, workers: int, batches: int, batch_size: int) -> float:
    import torch

    from vigface.config import AugmentConfig
    from vigface.data.augment import augment_batch, to_model_input
    from vigface.data.streaming import face_loader, open_face_stream

    torch.set_num_threads(1)
    ds = open_face_stream(data, size)
    aug = AugmentConfig(
        flip=True,
        shift=3,
        scale_jitter=0.05,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        grayscale_p=0.1,
    )  # fr_lfw_small.yaml's augmentation
    loader = iter(face_loader(ds, batch_size, workers, seed=0, epoch=0))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # warm-up: worker start, first reads
        augment_batch(to_model_input(next(loader)[0]), aug, g)
    t0 = time.perf_counter()
    for _ in range(batches):
        augment_batch(to_model_input(next(loader)[0]), aug, g)
    return batches * batch_size / (time.perf_counter() - t0)


def cmd_loader(args) -> dict:
    rates = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        rates[workers] = _loader_rate(args.data, args.input_size, workers, args.batches,
                                      args.batch_size)  # fmt: skip
        print(f"{workers} loader processes: {rates[workers]:.0f} img/s", flush=True)
    per_core = rates.get(1, rates[max(rates)])
    result = {
        "data": args.data,
        "input_size": args.input_size,
        "img_per_s_by_loader_processes": {str(k): round(v, 1) for k, v in rates.items()},
        "img_per_s_per_core": round(per_core, 1),
        "note": "0 processes: decoding in the training process itself; the machine has "
        f"{__import__('os').cpu_count()} cores, so rates above 1 process share them",
    }
    if args.gpu_img_per_s:
        result["cores_for_gpu"] = round(args.gpu_img_per_s / per_core, 1)
    return result


def _head_step(real: int, virtual: int, rate: float, batch: int, dim: int) -> dict:
    """One step in this process; returns peak RSS growth and time."""
    import torch

    from vigface.losses import PrototypeHead, num_virtual_per_batch

    torch.set_num_threads(1)

    def warm_up():  # the allocator's and the math libraries' own first-use memory
        small = PrototypeHead(8, 8, dim, sample_rate=rate)
        opt = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            small(torch.randn(batch, dim, requires_grad=True), torch.zeros(batch, dtype=torch.long),
                  torch.randn(4, dim), torch.zeros(4, dtype=torch.long)).backward()  # fmt: skip
            opt.step()

    warm_up()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    head = PrototypeHead(real, virtual, dim, scale=64, margin=0.5, sample_rate=rate)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    f = torch.randn(batch, dim, requires_grad=True)
    y = torch.randint(0, real, (batch,))
    b_v = num_virtual_per_batch(batch, real, virtual)
    v_emb = torch.randn(b_v, dim)
    v_lab = torch.randint(0, virtual, (b_v,))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = head(f, y, v_emb, v_lab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_growth_mb": round((peak - base) / 1024, 1),
            "step_s": round(min(times[1:]), 3), "virtual_rows_in_batch": b_v}  # fmt: skip


def cmd_head(args) -> dict:
    rows = {}
    for rate in [float(r) for r in args.rates.split(",")]:
        code = (
            "import json, sys; sys.path.insert(0, 'bench'); from stage1_scale import _head_step;"
            f"print(json.dumps(_head_step({args.real}, {args.virtual}, {rate}, {args.batch},"
            f" {args.dim})))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)  # fmt: skip
        rows[str(rate)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"sample rate {rate}: {rows[str(rate)]}", flush=True)
    classes = args.real + args.virtual
    w_mb = classes * args.dim * 4 / 2**20
    return {
        "real": args.real,
        "virtual": args.virtual,
        "batch": args.batch,
        "W_mb": round(w_mb, 1),
        "W_grad_momentum_mb": round(3 * w_mb, 1),
        "by_sample_rate": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="draw a CASIA-shaped RecordIO")
    m.add_argument("--model", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--classes", type=int, default=20_000)
    m.add_argument("--per-class", type=int, default=5)
    m.add_argument("--steps", type=int, default=3)
    m.add_argument("--guidance", type=float, default=1.0)
    m.add_argument("--batch-size", type=int, default=250)
    m.add_argument("--size", type=int, default=112, help="stored JPEG side")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    lo = sub.add_parser("loader", help="streaming loader img/s")
    lo.add_argument("--data", required=True)
    lo.add_argument("--input-size", type=int, default=112)
    lo.add_argument("--workers", default="0,1,2")
    lo.add_argument("--batches", type=int, default=40)
    lo.add_argument("--batch-size", type=int, default=128)
    lo.add_argument("--gpu-img-per-s", type=float, help="a GPU's stage-1 step rate, img/s")
    h = sub.add_parser("head", help="prototype head memory and time")
    h.add_argument("--real", type=int, default=10_000)
    h.add_argument("--virtual", type=int, default=100_000)
    h.add_argument("--rates", default="1.0,0.1")
    h.add_argument("--batch", type=int, default=128)
    h.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    result = {"make": cmd_make, "loader": cmd_loader, "head": cmd_head}[args.cmd](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

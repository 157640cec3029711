"""Sampler throughput: batched CFG (one 2B forward per step) against a naive loop.

The naive loop draws one image at a time with two separate forward passes per step in fp32,
at the same model, scheduler, steps and guidance. The sampler runs at ``--precision`` (default
``auto``: bf16 on CUDA and on CPUs with native bf16, see ``vigface.precision``) and is timed
eager and with ``compile_for_inference`` (the default ``--compile``; compilation happens in the
warm-up and is reported, not counted); ``speedup`` is the compiled one unless
``--no-compile``. When the precision resolves to bf16, the fp32 sampler is timed as well and
the mean / max difference of its 8-bit images from the bf16 ones is printed. All run in this
one process; the last line printed is a JSON object with ``sampler_img_per_s``,
``naive_img_per_s`` and ``speedup``. On CUDA the script also prints achieved TFLOP/s (FLOPs
counted by ``torch.utils.flop_counter``) against the card's dense bf16 peak; on CPU it prints
the fp32 TFLOP/s of a large matmul for scale and the CPU model.

    python bench/sampler.py --model demo                   # the bundled generator
    python bench/sampler.py --dit-config vigface/configs/dit_lfw_demo.yaml   # random weights

``--against`` (a model name, folder or train-dit YAML) times a second generator's batched
sampler in the same run at the same steps, guidance, batch and precision, and reports
``ratio_vs_against`` (this model's img/s over the other's): how the 112-px generator's cost
compares with the 32-px one's, for example::

    python bench/sampler.py --model runs/jit112 --against demo --steps 10 --guidance 1.75

``--decoder-formats`` times a latent model's decoder alone, contiguous against channels-last
memory (the sampler decodes channels-last); ``--accepted`` times the whole pipeline, filters
and redraws included, at the cards' defaults.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from vigface.generator.diffusion import cfg_combine, sampling_scheduler, training_scheduler
from vigface.generator.dit import FaceDiT
from vigface.generator.landmarks import render_heatmaps
from vigface.precision import PRECISIONS, describe_cpu, dtype_name
from vigface.sampling import (
    PAPER_SAMPLER,
    ImageRequest,
    Sampler,
    image_seed,
    initial_noise,
    to_uint8,
)

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "GH200": 989.0,
}


def card_peak(name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def current_peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


@torch.inference_mode()
def naive_sample(dit, train_sched, req: ImageRequest, steps: int, guidance: float, name: str):
    device = next(dit.parameters()).device
    sched = sampling_scheduler(train_sched, name)
    sched.set_timesteps(steps, device=device)
    size = dit.config.sample_size
    x = initial_noise(req.seed, size)[None].to(device) * sched.init_noise_sigma
    w = torch.nn.functional.normalize(torch.from_numpy(req.identity[None]).float(), dim=1).to(
        device
    )
    heat = render_heatmaps(torch.from_numpy(req.landmarks[None]).to(device), size)
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        tt = t.expand(1).to(device)
        v_c = dit(xin, tt, w, heat)
        v_u = dit(xin, tt, torch.zeros_like(w), heat)
        x = sched.step(cfg_combine(v_c, v_u, guidance), t, x).prev_sample
    return to_uint8(x)


def forward_flops(dit, batch: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    s = dit.config.sample_size
    args = (
        torch.randn(batch, 3, s, s, device=device),
        torch.full((batch,), 500, device=device),
        torch.randn(batch, dit.config.identity_dim, device=device),
        torch.randn(batch, 5, s, s, device=device),
    )
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        dit(*args)
    return float(counter.get_total_flops())


def matmul_tflops(n: int = 2048, reps: int = 10, device="cpu", dtype=torch.float32) -> float:
    """What a plain square GEMM reaches here: the ceiling the sampler is measured against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def load_dit(spec: str | Path, device):
    """(DiT, training scheduler, description) of a train-dit YAML (random weights) or of a
    generator entry (name or folder)."""
    if str(spec).endswith((".yaml", ".yml")):
        from vigface.config import TrainDiTConfig, load_config

        cfg = load_config(spec, TrainDiTConfig)
        dit = FaceDiT(**cfg.model.model_dump()).to(device).eval()
        return dit, training_scheduler(**cfg.diffusion.model_dump()), str(spec)
    from model_store import resolve
    from vigface.generator.artifact import Generator

    entry = Path(spec) if Path(spec).is_dir() else resolve(str(spec))
    gen = Generator.load(entry, device=device)
    return gen.dit, gen.scheduler, str(entry)


def accepted_rate(
    model: str, identities: int, per_identity: int, seed: int, work: Path, face_gate=None
) -> dict:
    """Accepted images per second of a model at its card's defaults through the real pipeline
    (draw, filter, redraw, replace: what a shard does), and the acceptance rate."""
    import shutil

    from model_store.loader import open_generator
    from vigface.dataset.pipeline import DatasetBuilder
    from vigface.dataset.spec import DatasetSpec, resolve_spec

    gen = open_generator(model)
    spec = resolve_spec(
        DatasetSpec(
            identities=identities, images_per_identity=per_identity, seed=seed, face_gate=face_gate
        ),
        gen.card,
    )
    out = work / Path(model).name
    shutil.rmtree(out, ignore_errors=True)
    builder = DatasetBuilder(gen, spec, out, progress=False)
    t0 = time.perf_counter()
    builder.generate()
    seconds = time.perf_counter() - t0
    accepted = identities * per_identity
    counts = builder.counts
    return {
        "model": model,
        "output_px": gen.output_size,
        "accepted_img_per_s": round(accepted / seconds, 4),
        "acceptance_rate": round(accepted / max(counts["generated"], 1), 4),
        "accepted": accepted,
        "drawn": int(counts["generated"]),
        "sampling_s": round(builder.seconds["sampling"], 3),
        "filtering_s": round(builder.seconds["filtering"], 3),
        "seconds": round(seconds, 3),
        "face_gate": spec.face_gate,
    }


def decoder_formats(model: str, batch: int, precision: str, repeats: int = 5) -> dict:
    """A latent model's decoder on one batch of latents: one contiguous batch, one
    channels-last batch, and channels-last in chunks of ``DECODE_CHUNK`` (what the sampler
    does), timed alternately in one run, with the largest 8-bit difference from the first."""
    from model_store.loader import open_generator
    from vigface.generator.autoencoder import decode
    from vigface.precision import autocast
    from vigface.sampling import DECODE_CHUNK

    gen = open_generator(model)
    if gen.autoencoder is None:
        raise SystemExit(f"--decoder-formats: {model} is not a latent model (no autoencoder)")
    vae, cpu = gen.autoencoder, torch.device("cpu")
    side = gen.dit.config.sample_size
    z = torch.randn(batch, vae.config.latent_channels, side, side, generator=torch.Generator())
    ways = {
        "contiguous": (torch.contiguous_format, batch),
        "channels_last": (torch.channels_last, batch),
        f"channels_last_chunks_of_{DECODE_CHUNK}": (torch.channels_last, DECODE_CHUNK),
    }
    seconds = dict.fromkeys(ways, 0.0)
    images = {}
    with torch.inference_mode(), autocast(cpu, precision):
        for i in range(repeats + 1):  # the first round warms up, untimed
            for name, (fmt, chunk) in ways.items():
                vae.to(memory_format=fmt)
                t0 = time.perf_counter()
                parts = [decode(vae, p.contiguous(memory_format=fmt)) for p in z.split(chunk)]
                images[name] = to_uint8(torch.cat(parts))
                seconds[name] += (time.perf_counter() - t0) if i else 0.0
    ips = {k: round(batch * repeats / v, 2) for k, v in seconds.items()}
    first = images["contiguous"].astype(int)
    return {
        "model": model,
        "decoded_img_per_s": ips,
        "speedup_vs_contiguous": {k: round(v / ips["contiguous"], 3) for k, v in ips.items()},
        "max_8bit_difference": {
            k: int(np.abs(v.astype(int) - first).max()) for k, v in images.items()
        },
        "batch": batch,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "cpu": describe_cpu(),
    }


def malloc_modes(model: str, batch: int, repeats: int = 5) -> dict:
    """Batches of a model's sampler at its card's defaults with glibc's default malloc
    thresholds and with freed memory kept (:mod:`vigface.cpu_memory`), alternately in one run:
    seconds and minor page faults per batch (medians), and the median ratio pair by pair."""
    from model_store.loader import open_generator
    from vigface.cpu_memory import GLIBC_DEFAULT, keep_freed_memory, set_malloc_thresholds
    from vigface.sampler_settings import SamplerSettings

    gen = open_generator(model)
    sampler = Sampler.for_generator(gen, SamplerSettings.for_model(gen.card), batch)
    ids = gen.fr.virtual_prototypes[:batch]
    frontal = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    lms = torch.from_numpy(np.stack([frontal] * batch)).float()
    modes = {"glibc_default": lambda: set_malloc_thresholds(GLIBC_DEFAULT, GLIBC_DEFAULT),
             "kept": keep_freed_memory}  # fmt: skip
    got = {m: {"seconds": [], "minor_faults": []} for m in modes}
    sampler.sample(ids, lms, list(range(batch)))  # warm-up
    for _ in range(repeats):
        for name, set_mode in modes.items():
            if not set_mode():
                raise SystemExit("--malloc-modes: this C library has no mallopt (not glibc)")
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            sampler.sample(ids, lms, list(range(batch)))
            got[name]["seconds"].append(time.perf_counter() - t0)
            got[name]["minor_faults"].append(
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            )
    keep_freed_memory()
    pairs = [
        a / b for a, b in zip(got["glibc_default"]["seconds"], got["kept"]["seconds"], strict=True)
    ]
    return {
        "model": model,
        "batch": batch,
        "median_seconds": {m: round(float(np.median(v["seconds"])), 3) for m, v in got.items()},
        "median_minor_faults": {m: int(np.median(v["minor_faults"])) for m, v in got.items()},
        "speedup_kept_median_pair": round(float(np.median(pairs)), 3),
        "threads": torch.get_num_threads(),
        "cpu": describe_cpu(),
    }


def pooled(runs: list[dict]) -> dict:
    """One model's repeats of :func:`accepted_rate` as one row: images over seconds."""
    images = sum(r["accepted"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    drawn = sum(r["drawn"] for r in runs)
    return {
        **runs[0],
        "accepted_img_per_s": round(images / seconds, 4),
        "acceptance_rate": round(images / max(drawn, 1), 4),
        "accepted": images,
        "drawn": drawn,
        "seconds": round(seconds, 1),
        "repeats": len(runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="generator entry (name or folder)")
    ap.add_argument("--dit-config", type=Path, help="random-weight DiT from a train-dit YAML")
    ap.add_argument("--images", type=int, default=64, help="images for the batched sampler")
    ap.add_argument("--naive-images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=PAPER_SAMPLER.steps)
    ap.add_argument("--guidance", type=float, default=PAPER_SAMPLER.guidance, help="the paper's")
    ap.add_argument("--scheduler", default="dpmsolver")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sampler with compile_for_inference (default); the eager sampler is timed too",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the sampler's precision (auto: bf16 on CUDA and CPUs with native bf16); when it "
        "resolves to bf16 the fp32 sampler is timed too and the image difference reported",
    )
    ap.add_argument("--against", help="another generator (name, folder or YAML) timed alike")
    ap.add_argument(
        "--accepted",
        action="store_true",
        help="instead: accepted images per second of --model and --against at their cards' "
        "defaults through the dataset pipeline (filters, redraws), and their ratio",
    )
    ap.add_argument("--identities", type=int, default=16, help="with --accepted")
    ap.add_argument("--images-per-identity", type=int, default=4, help="with --accepted")
    ap.add_argument(
        "--face-gate",
        choices=("card", "on", "off"),
        default="card",
        help="with --accepted: the face detector gate as each card says (the defaults), or "
        "on / off for both",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="with --accepted: runs of each, order alternated"
    )
    ap.add_argument("--work", type=Path, default=Path("runs/bench_accepted"), help="--accepted")
    ap.add_argument(
        "--decoder-formats",
        action="store_true",
        help="instead: a latent --model's decoder, contiguous against channels-last memory",
    )
    ap.add_argument(
        "--malloc-modes",
        action="store_true",
        help="instead: --model's sampler with glibc's default malloc thresholds against freed "
        "memory kept (vigface.cpu_memory), alternately, --repeats batches each",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.malloc_modes:
        print(json.dumps(malloc_modes(args.model, args.batch_size, args.repeats)))
        return
    if args.decoder_formats:
        print(json.dumps(decoder_formats(args.model, args.batch_size, args.precision)))
        return
    if args.accepted:
        gate = {"card": None, "on": True, "off": False}[args.face_gate]
        models = [args.model, *([args.against] if args.against else [])]
        for m in models:  # untimed: first calls build kernels a long-running worker reuses
            accepted_rate(m, 2, 2, 1, args.work, gate)
        runs = []
        for r in range(args.repeats):  # alternate the order: drift in the machine's speed
            for m in models if r % 2 == 0 else models[::-1]:  # falls on both alike
                runs.append(
                    accepted_rate(m, args.identities, args.images_per_identity, 0, args.work, gate)
                )
                row = runs[-1]
                print(
                    f"{row['model']:>24}: {row['accepted_img_per_s']} accepted img/s at "
                    f"{row['output_px']} px (acceptance {row['acceptance_rate']}, "
                    f"{row['seconds']} s: sampling {row['sampling_s']}, "
                    f"filters {row['filtering_s']})"
                )
        rows = [pooled([x for x in runs if x["model"] == m]) for m in models]
        result = {"cpu": describe_cpu(), "threads": torch.get_num_threads(), "rows": rows}
        if len(rows) == 2:
            ratio = rows[0]["accepted_img_per_s"] / rows[1]["accepted_img_per_s"]
            result["ratio_vs_against"] = round(ratio, 3)
            per = [a["accepted_img_per_s"] / b["accepted_img_per_s"]
                   for a, b in zip(runs[0::2], runs[1::2], strict=True)]  # fmt: skip
            result["ratio_per_repeat"] = [round(x if i % 2 == 0 else 1 / x, 3)
                                          for i, x in enumerate(per)]  # fmt: skip
            # the figure to quote: on a shared machine one slow spell moves the pooled ratio
            result["ratio_median_pair"] = round(float(np.median(result["ratio_per_repeat"])), 3)
        print(json.dumps(result))
        return
    device = torch.device(args.device)

    dit, train_sched, source = load_dit(args.dit_config or args.model, device)
    rng = np.random.default_rng(0)
    d = dit.config.identity_dim
    reqs = [
        ImageRequest(
            rng.normal(size=d).astype(np.float32),
            (
                np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
                + rng.normal(0, 2, (5, 2))
            ).astype(np.float32),
            image_seed(0, i, 0),
        )
        for i in range(args.images)
    ]
    print(
        f"model {source}: {sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M params, "
        f"{dit.config.sample_size}px, device {device}, threads {torch.get_num_threads()}"
    )

    def time_sampler(compile: bool, precision: str, dit=dit, train_sched=train_sched) -> dict:
        """Images/s, peak memory (MB), warm-up seconds (incl. compilation) and the images of
        one sampler configuration."""
        sampler = Sampler(
            dit,
            train_sched,
            args.scheduler,
            args.steps,
            args.guidance,
            args.batch_size,
            compile=compile,
            precision=precision,
        )
        t0 = time.perf_counter()
        for _ in sampler.stream(reqs[: args.batch_size]):  # warm-up (and compile)
            pass
        # the last batch may be smaller: compile that shape too before timing
        tail = len(reqs) % args.batch_size
        if compile and tail:
            for _ in sampler.stream(reqs[:tail]):
                pass
        warm = time.perf_counter() - t0
        reset_peak(device)
        t0 = time.perf_counter()
        images = np.concatenate([im for _, im in sampler.stream(reqs)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ips = len(images) / (time.perf_counter() - t0)
        return {
            "ips": ips,
            "peak": current_peak_mb(device),
            "warm": warm,
            "images": images,
            "dtype": dtype_name(sampler.dtype),
        }

    eager = time_sampler(False, args.precision)
    best = time_sampler(True, args.precision) if args.compile else eager
    against = None
    if args.against:
        other, other_sched, other_source = load_dit(args.against, device)
        print(f"against {other_source}: {other.config.sample_size}px")
        against = {
            "source": other_source,
            "sample_size": other.config.sample_size,
            "eager": time_sampler(False, args.precision, other, other_sched)["ips"],
        }
        if args.compile:
            against["compiled"] = time_sampler(True, args.precision, other, other_sched)["ips"]
    fp32 = None
    if best["dtype"] != "float32":  # the same sampler in fp32, for speed and image difference
        fp32 = time_sampler(args.compile, "fp32")
    n = len(reqs)

    naive_sample(dit, train_sched, reqs[0], 2, args.guidance, args.scheduler)  # warm-up
    reset_peak(device)
    t0 = time.perf_counter()
    for r in reqs[: args.naive_images]:
        naive_sample(dit, train_sched, r, args.steps, args.guidance, args.scheduler)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_naive = time.perf_counter() - t0
    peak_naive = current_peak_mb(device)

    naive_ips = args.naive_images / t_naive
    sampler_ips = best["ips"]
    result = {
        "sampler_img_per_s": round(sampler_ips, 3),
        "naive_img_per_s": round(naive_ips, 3),
        "speedup": round(sampler_ips / naive_ips, 2),
        "sampler_compiled": args.compile,
        "sampler_precision": best["dtype"],
        "compile_warmup_s": round(best["warm"], 1) if args.compile else 0.0,
        "eager_sampler_img_per_s": round(eager["ips"], 3),
        "eager_speedup": round(eager["ips"] / naive_ips, 2),
        "peak_mem_mb_sampler": round(best["peak"], 1),
        "peak_mem_mb_eager_sampler": round(eager["peak"], 1),
        "peak_mem_mb_naive": round(peak_naive, 1),
        "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss_peak",
        "images": n,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "guidance": args.guidance,
        "scheduler": args.scheduler,
        "device": str(device),
    }
    if against is not None:
        result["model"] = source
        result["sample_size"] = dit.config.sample_size
        result["against"] = against["source"]
        result["against_sample_size"] = against["sample_size"]
        result["against_eager_img_per_s"] = round(against["eager"], 3)
        result["ratio_vs_against_eager"] = round(eager["ips"] / against["eager"], 3)
        if "compiled" in against:
            result["against_img_per_s"] = round(against["compiled"], 3)
            result["ratio_vs_against"] = round(sampler_ips / against["compiled"], 3)
    if fp32 is not None:
        diff = np.abs(best["images"].astype(int) - fp32["images"].astype(int))
        result["fp32_sampler_img_per_s"] = round(fp32["ips"], 3)
        result["fp32_speedup"] = round(fp32["ips"] / naive_ips, 2)
        result["vs_fp32_mean_abs_level"] = round(float(diff.mean()), 3)
        result["vs_fp32_max_abs_level"] = int(diff.max())
    if device.type == "cpu":
        result["cpu"] = describe_cpu()
    flops_per_image = forward_flops(dit, 2, device) / 2 * 2 * args.steps  # 2 branches per step
    result["sampler_tflops"] = round(flops_per_image * sampler_ips / 1e12, 4)
    result["naive_tflops"] = round(flops_per_image * naive_ips / 1e12, 4)
    if device.type == "cpu":  # what this CPU's fp32 GEMM reaches, for scale
        result["cpu_fp32_matmul_tflops"] = round(matmul_tflops(), 4)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = card_peak(name)
        result["card"] = name
        measured = matmul_tflops(8192, 20, device, torch.bfloat16)
        result["bf16_matmul_tflops"] = round(measured, 2)
        result["fraction_of_matmul"] = round(result["sampler_tflops"] / measured, 4)
        print(f"bf16 8192^3 matmul on this card: {measured:.1f} TFLOP/s")
        if peak:
            result["bf16_peak_tflops"] = peak
            result["fraction_of_peak"] = round(result["sampler_tflops"] / peak, 4)
        print(
            f"achieved {result['sampler_tflops']} TFLOP/s on {name}"
            + (
                f" = {100 * result['sampler_tflops'] / peak:.2f}% of {peak} bf16 peak"
                if peak
                else ""
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""What a dataset is worth (the utility probe): train a probe FR model on it and verify on
benchmark pairs. It lives with the trainers because it is one; evaluation measures only.

The probe is stage 1's trainer without virtual prototypes, one fixed recipe
(``configs/fr_probe.yaml``) and a fixed step budget for every dataset, so two datasets (real,
synthetic, mixed) are compared by one number each: 10-fold verification accuracy on each
insightface ``.bin`` (lfw.bin, cfp_fp.bin, agedb_30.bin, or the project's dev pairs).

Several sources train together (real + synthetic rows of the paper's tables): their images
are linked under one root by identity name, so real-identity augmentation (generated images
named by the real class) fills the real class up, and virtual identities (``v000123``) stay
classes of their own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vigface.config import TrainFRConfig, load_config
from vigface.data import AlignedFaceFolder, DatasetError, load_bin
from vigface.evaluation.verification import evaluate_pairs
from vigface.training.fr import train_fr

log = logging.getLogger(__name__)
PROBE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fr_probe.yaml"


def image_folder(path: str | Path) -> Path:
    """The ImageFolder of a dataset: a generated dataset's ``imagefolder/`` or the folder."""
    path = Path(path)
    return path / "imagefolder" if (path / "imagefolder").is_dir() else path


def merge_sources(sources: list[Path], root: Path) -> Path:
    """One ImageFolder of links: ``<root>/<identity>/s<i>_<file>`` -> each source's image."""
    root.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        folder = image_folder(src)
        if not folder.is_dir():
            raise DatasetError(f"training data not found: {src}")
        for ident in sorted(p for p in folder.iterdir() if p.is_dir()):
            (root / ident.name).mkdir(exist_ok=True)
            for f in ident.iterdir():
                link = root / ident.name / f"s{i}_{f.name}"
                if f.is_file() and not link.exists():
                    link.symlink_to(f.resolve())
    return root


def probe_config(
    steps: int | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
    config: Path | None = None,
) -> TrainFRConfig:
    overrides = {}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if steps is not None:
        overrides["max_steps"] = steps
    if resolution is not None:
        overrides["backbone.input_size"] = resolution
    cfg = load_config(config or PROBE_CONFIG, overrides=overrides)
    if cfg.head.num_virtual:
        raise DatasetError("the probe trains without virtual prototypes (head.num_virtual: 0)")
    return cfg


def dataset_utility(
    sources: list[str | Path],
    benchmarks: dict[str, str | Path],
    work_dir: str | Path,
    cfg: TrainFRConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Train the probe on ``sources`` (together) and verify it on every benchmark.

    Returns ``{"recipe", "train", "benchmarks": {name: {"accuracy", "accuracy_std", ...}}}``.
    Benchmarks are read first, so a bad ``.bin`` fails before minutes of training."""
    cfg = cfg or probe_config()
    pairs = {name: load_bin(path) for name, path in benchmarks.items()}
    work = Path(work_dir)
    root = merge_sources([Path(s) for s in sources], work / "train")
    ds = AlignedFaceFolder.scan(root)
    if len(ds.samples) < cfg.batch_size:  # a small dataset is probed with smaller batches
        cfg = cfg.model_copy(update={"batch_size": max(2, len(ds.samples))})
    t0 = time.time()
    model = train_fr(cfg, root, work / "probe", resume=False, device=device, progress=progress)
    minutes = (time.time() - t0) / 60
    results = {}
    for name, (images, issame) in pairs.items():
        m = evaluate_pairs(model, images, issame)
        results[name] = {k: round(float(v), 4) for k, v in m.items() if isinstance(v, float)}
        results[name]["pairs"] = int(len(issame))
    return {
        "recipe": {
            "config": "vigface/configs/fr_probe.yaml",
            "steps": cfg.max_steps,
            "resolution": cfg.backbone.input_size,
            "batch_size": cfg.batch_size,
        },
        "train": {
            "images": len(ds.samples),
            "identities": ds.num_classes,
            "minutes": round(minutes, 1),
        },
        "benchmarks": results,
    }

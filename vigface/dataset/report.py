"""Self-contained ``report.html``: the numbers of ``report.json`` plus plots, inline PNGs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from vigface.atomic import atomic_write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict, out_dir: Path) -> dict[str, str]:
    import csv

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((out_dir / "manifest.csv").open()))
    own = np.array([float(r["cos_own"]) for r in rows])  # every draw, rejected ones too
    near = np.array([float(r["nearest_real_cos"]) for r in rows])
    tau = report["thresholds"]
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    both = np.concatenate([own, near, [tau["tau_consistency"], tau["tau_leak"]]])
    lo, hi = np.floor(both.min() * 20) / 20, np.ceil(both.max() * 20) / 20  # 0.05 steps
    bins = np.linspace(lo, hi, 41)
    ax.hist(own, bins=bins, alpha=0.7, label="cos to own prototype")
    ax.hist(near, bins=bins, alpha=0.7, label="max cos to any real prototype")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x + 0:.2f}"))
    ax.axvline(tau["tau_consistency"], color="tab:blue", ls="--", lw=1, label="tau_consistency")
    ax.axvline(tau["tau_leak"], color="tab:red", ls="--", lw=1, label="tau_leak")
    ax.set(xlabel="cosine (stage-1 FR model)", ylabel="images (every draw)")
    ax.legend(fontsize=7)
    plots["similarity"] = _png(fig)
    plt.close(fig)

    pose = report["pose"]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    x = np.arange(len(pose["bins"]))
    bars = [("requested", pose["requested"]), ("drawn (landmarks)", pose["drawn"])]
    if pose.get("shown"):
        bars.append(("shown (pixels)", pose["shown"]))
    width = 0.8 / len(bars)
    for i, (label, shares) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, shares, width, label=label)
    ax.set_xticks(x, pose["bins"], rotation=30, fontsize=7)
    ax.set(ylabel="share of images", title=f"yaw bins (TV distance {pose['total_variation']})")
    ax.legend(fontsize=7)
    plots["pose"] = _png(fig)
    plt.close(fig)
    return plots


def _sample_grids(out_dir: Path, per_bin: int = 8) -> dict[str, str]:
    """A row of accepted images per pose bin, from the ImageFolder output when present."""
    import csv

    from PIL import Image

    rows = list(csv.DictReader((out_dir / "manifest.csv").open()))
    root = out_dir / "imagefolder"
    grids = {}
    if not root.is_dir():
        return grids
    by_bin: dict[str, list[str]] = {}
    for r in rows:
        if r["file"]:
            by_bin.setdefault(r["pose_bin"], []).append(r["file"])
    for name, files in by_bin.items():
        files = files[:: max(1, len(files) // per_bin)][:per_bin]
        tiles = [Image.open(root / f).convert("RGB").resize((72, 72)) for f in files]
        strip = Image.new("RGB", (74 * len(tiles), 74), "white")
        for i, t in enumerate(tiles):
            strip.paste(t, (74 * i + 1, 1))
        buf = io.BytesIO()
        strip.save(buf, format="PNG")
        grids[name] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return grids


def format_or_na(fmt: str, *args, **kwargs) -> str:
    """Jinja's ``format`` filter, with "n/a" for a value a report leaves undefined (None: one
    identity has no separability, one image per identity no consistency)."""
    if any(a is None for a in (*args, *kwargs.values())):
        return "n/a"
    return fmt % (kwargs or args)


def write_html_report(path: Path, report: dict, out_dir: Path) -> None:
    """Render ``templates/report.html.j2``; plots and sample strips are inline PNGs, so the
    page is one self-contained file beside report.json."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    env.filters["format"] = format_or_na
    html_text = env.get_template("report.html.j2").render(
        d=report["dataset"],
        spec=report["dataset"].get("spec", {}),
        a=report["attributes"],
        c=report["counts"],
        t=report["thresholds"],
        leak=report["leakage"],
        pose=report["pose"],
        judge=report.get("judge"),
        utility=report.get("utility"),
        provenance=report.get("provenance"),
        plots=_plots(report, out_dir),
        grids=_sample_grids(out_dir),
    )
    atomic_write_text(path, html_text)

"""Self-contained ``report.html``: the numbers of ``report.json`` plus plots, inline PNGs."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict, out_dir: Path) -> dict[str, str]:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((out_dir / "manifest.csv").open()))
    own = np.array([float(r["cos_own"]) for r in rows])  # every draw, rejected ones too
    near = np.array([float(r["nearest_real_cos"]) for r in rows])
    tau = report["thresholds"]
    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(-0.2, 1.0, 49)
    ax.hist(own, bins=bins, alpha=0.7, label="cos to own prototype")
    ax.hist(near, bins=bins, alpha=0.7, label="max cos to any real prototype")
    ax.axvline(tau["tau_consistency"], color="tab:blue", ls="--", lw=1, label="tau_consistency")
    ax.axvline(tau["tau_leak"], color="tab:red", ls="--", lw=1, label="tau_leak")
    ax.set(xlabel="cosine (FR model)", ylabel="images")
    ax.legend(fontsize=7)
    plots["similarity"] = _png(fig)
    plt.close(fig)

    pose = report["pose"]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    x = np.arange(len(pose["bins"]))
    ax.bar(x - 0.2, pose["requested"], 0.4, label="requested")
    ax.bar(x + 0.2, pose["drawn"], 0.4, label="drawn")
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


def write_html_report(path: Path, report: dict, out_dir: Path) -> None:
    plots = _plots(report, out_dir)
    grids = _sample_grids(out_dir)
    a, c = report["attributes"], report["counts"]
    lk = report["leakage"]

    def row(k, v):
        return f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"

    def fmt(x):
        return f"{x:.4f}" if isinstance(x, float) else x

    tables = "".join(row(k, fmt(v)) for k, v in {**a, **c}.items())
    leak_rows = "".join(
        row(f"{name} {q}", fmt(s.get(q)))
        for name, s in lk.items()
        if s
        for q in ("p50", "p99", "max")
    )
    grid_html = "".join(
        f"<h3>{html.escape(b)}</h3><img alt='samples {html.escape(b)}' src='{src}'>"
        for b, src in grids.items()
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>VIGFace dataset report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:24px auto;color:#222}}
table{{border-collapse:collapse;margin:8px 0}}th,td{{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}}
th{{background:#f4f4f4}}img{{max-width:100%}}pre{{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}}</style>
</head><body><h1>Dataset report</h1>
<p>{report["dataset"]["num_classes"]} identities, {report["dataset"]["num_image"]} images ({html.escape(report["dataset"]["kind"])}).</p>
<h2>Attributes and counts</h2><table>{tables}</table>
<h2>Similarity</h2><img alt="similarity histogram" src="{plots["similarity"]}">
<h2>Leakage</h2><table>{leak_rows}</table>
<h2>Pose</h2><img alt="pose histogram" src="{plots["pose"]}">
<h2>Samples per pose bin</h2>{grid_html}
<h2>report.json</h2><pre>{html.escape(json.dumps(report, indent=1))}</pre>
</body></html>"""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc)
    tmp.replace(path)

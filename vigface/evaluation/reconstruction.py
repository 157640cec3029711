"""How faithfully the face autoencoder round-trips faces it never trained on: pixel error,
identity kept (the stage-1 FR model's and the outside judge's cosine between a face and its
reconstruction), and what the eye sees (:mod:`vigface.evaluation.image_quality`), with a
contact sheet of originals above reconstructions."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vigface.data.augment import to_model_input
from vigface.evaluation.image_quality import detail, seam_ratio
from vigface.generator.autoencoder import decode, encode


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, 112, 112, 3) uint8 -> their round trip through the autoencoder, uint8."""
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[i : i + batch_size]))
        y = decode(vae, encode(vae, x)).clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def pair_cosines(embed, a: np.ndarray, b: np.ndarray) -> float:
    ea, eb = np.asarray(embed(a)), np.asarray(embed(b))
    return float(np.mean(np.sum(ea * eb, axis=1)))


def reconstruction_report(vae, fr, images: np.ndarray, judge=None, period: int = 16) -> dict:
    """Figures of the autoencoder on ``images`` (faces it did not train on)."""
    rec = reconstruct(vae, images)
    report = {
        "images": len(images),
        "psnr_db": round(psnr(images, rec), 2),
        "fr_cosine": round(pair_cosines(lambda x: fr.embed(x, flip=False).numpy(), images, rec), 4),
        "seam_ratio": round(seam_ratio(rec, period), 4),
        "seam_ratio_real": round(seam_ratio(images, period), 4),
        "detail_above_32px": round(detail(rec), 4),
        "detail_above_32px_real": round(detail(images), 4),
    }
    if judge is not None:
        report["judge_cosine"] = round(pair_cosines(judge.embed, images, rec), 4)
    return report, rec


def contact_sheet(rows: list[np.ndarray], path, columns: int = 8) -> None:
    """Each entry of ``rows`` (a batch of faces) as one row of ``columns`` faces."""
    rows = [r[:columns] for r in rows]
    s = rows[0].shape[1]
    sheet = np.full((len(rows) * s, columns * s, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, face in enumerate(row):
            sheet[i * s : (i + 1) * s, j * s : (j + 1) * s] = face
    Image.fromarray(sheet).save(path)

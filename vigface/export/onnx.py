"""ONNX export of the FR backbone in the form insightface's model zoo recognises.

``insightface.model_zoo.get_model`` treats a square input of side >= 112 (multiple of 16)
as an ArcFace recognition model and normalises ``(pixel - 127.5) / 127.5`` itself unless it
finds Sub/Mul nodes at the start of the graph. So the graph takes the standard 112x112
aligned crop already in [-1, 1], has no normalisation inside, pools down to the backbone's
own resolution when that is smaller, and returns the un-normalised embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vigface.backbones import AlignedCropEmbedder
from vigface.constants import CROP_SIZE


def export_backbone(fr_model, out: str | Path, crop_size: int = CROP_SIZE, opset: int = 17) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = AlignedCropEmbedder(fr_model.backbone, crop_size).cpu().eval()
    dummy = torch.zeros(1, 3, crop_size, crop_size)
    torch.onnx.export(
        module,
        (dummy,),
        str(out),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return out

"""What the eye sees: seams of a patch grid, detail above 32 px, and the face gate, each on
both sides of what it tells apart."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vigface.dataset.filters import DatasetFilter
from vigface.evaluation.image_quality import (
    EXPECTED_CENTRE,
    PLACE_TOLERANCE,
    FaceDetector,
    detail,
    seam_ratio,
    well_placed,
)


def _smooth(n=6, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, 10, 10, 3), dtype=np.uint8)  # off both grids
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((112, 112), Image.BICUBIC)) for s in small]
    )


def test_a_patch_grid_shows_in_the_seam_ratio_and_a_smooth_image_does_not():
    smooth = _smooth()
    assert 0.8 < seam_ratio(smooth, 14) < 1.2
    # the same images with every 14-px block shifted in brightness: a mosaic
    rng = np.random.default_rng(1)
    offsets = rng.integers(-40, 40, (6, 8, 8, 1)).repeat(14, 1).repeat(14, 2)
    mosaic = np.clip(smooth.astype(int) + offsets, 0, 255).astype(np.uint8)
    assert seam_ratio(mosaic, 14) > 2 * seam_ratio(smooth, 14)
    # ... seen on its own grid, not on another one
    assert seam_ratio(mosaic, 16) < seam_ratio(mosaic, 14)


def test_detail_tells_a_resized_32_px_image_from_fine_texture():
    smooth = _smooth(4)
    texture = np.random.default_rng(2).normal(0, 25, smooth.shape)
    fine = np.clip(smooth + texture, 0, 255).astype(np.uint8)
    coarse = np.stack(
        [
            np.asarray(
                Image.fromarray(f).resize((32, 32), Image.BOX).resize((112, 112), Image.BICUBIC)
            )
            for f in fine
        ]
    )
    assert detail(coarse) < 0.5 * detail(fine)


def test_a_box_is_well_placed_only_near_where_the_crop_puts_a_face():
    cx, cy = EXPECTED_CENTRE
    centred = (int(cx - 42), int(cy - 42), int(cx + 42), int(cy + 42))
    assert well_placed(centred)
    far = int(PLACE_TOLERANCE) + 4
    assert not well_placed(tuple(v + far if i % 2 == 0 else v for i, v in enumerate(centred)))
    assert not well_placed((int(cx - 10), int(cy - 10), int(cx + 10), int(cy + 10)))  # too small
    assert not well_placed(None)


def test_the_face_filter_rejects_and_counts_images_without_a_face():
    filt = DatasetFilter(np.eye(3, 4), tau_consistency=0.0, tau_leak=0.9, face_gate=True)
    emb = np.eye(3, 4)[[0, 1]] * 0 + np.array([0, 0, 0, 1.0])  # consistent with own, no leak
    own = np.array([[0, 0, 0, 1.0]] * 2)
    v = filt.image_verdicts(emb, own, np.array([0, 1]), face=np.array([True, False]))
    assert v.passed.tolist() == [True, False]
    assert v.counts()["rejected_face"] == 1 and v.counts()["rejected_consistency"] == 0
    off = filt.image_verdicts(emb, own, np.array([0, 1]))  # no detector run: gate passes
    assert off.passed.tolist() == [True, True] and "face" in filt.describe()


def test_the_detector_finds_real_faces_where_the_crop_puts_them_and_nothing_in_noise(lfw112):
    from vigface.data import AlignedFaceFolder

    images, _ = AlignedFaceFolder.scan(lfw112 / "dev").load_array(112)
    faces = images[np.random.default_rng(0).choice(len(images), 20, replace=False)]
    det = FaceDetector()
    found = [d.well_placed for d in det.detect_all(faces)]
    assert np.mean(found) >= 0.9
    noise = np.random.default_rng(3).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
    assert not any(d.found for d in det.detect_all(noise))
    # the same faces moved 40 px to the side: found, but not where an aligned crop has one
    moved = np.zeros_like(faces)
    moved[:, :, 40:] = faces[:, :, :72]
    shifted = det.detect_all(moved)
    assert not any(d.well_placed for d in shifted)


@pytest.mark.parametrize("period", [14, 16])
def test_real_faces_show_no_grid(lfw112, period):
    from vigface.data import AlignedFaceFolder

    images, _ = AlignedFaceFolder.scan(lfw112 / "dev").load_array(112)
    assert 0.9 < seam_ratio(images[:100], period) < 1.1

"""Checks against the real LFW-112 data in ../shared (skipped where it is absent)."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from model_store import list_models, resolve
from vigface.data import AlignedFaceFolder, load_bin

pytestmark = pytest.mark.integration


def test_train_folder_and_landmarks(lfw112):
    ds = AlignedFaceFolder.scan(lfw112 / "train")
    assert ds.num_classes == 4024 and len(ds) == 9857
    assert ds.landmarks_file.name == "train_landmarks.csv"
    assert all(s.landmarks is not None for s in ds.samples)


def test_dev_pairs_bin(lfw112):
    images, issame = load_bin(lfw112 / "dev_pairs.bin", size=56)
    assert images.shape == (6000, 56, 56, 3)
    assert issame.sum() == 1500


# eval-fr's metrics per set of stage-1 weights: the bundled generators share one FR model,
# and every card that carries it is checked against one evaluation of it
_EVALUATED: dict[str, dict] = {}


def _weights_digest(fr_dir) -> str:
    h = hashlib.sha256()
    for f in sorted(fr_dir.glob("*.safetensors")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("entry", [e.name for e in list_models()])
def test_bundled_fr_model_reproduces_its_card(lfw112, entry):
    fr_dir = resolve(entry, part="fr")
    card = json.loads((fr_dir / "model_card.json").read_text())
    key = _weights_digest(fr_dir)
    if key not in _EVALUATED:
        r = CliRunner().invoke(
            app, ["eval-fr", "--model", entry, "--pairs", str(lfw112 / "dev_pairs.bin")]
        )
        assert r.exit_code == 0, r.output
        _EVALUATED[key] = json.loads(r.output.strip().splitlines()[-1])
    metrics = _EVALUATED[key]
    assert metrics["accuracy"] == pytest.approx(card["dev_accuracy"], abs=1e-6)
    o = card["orthogonality"]
    assert o["v_to_r"]["mean"] <= o["r_to_r"]["mean"]

"""What the API reads of a model without loading it, and the prototype-set digest."""

import json
import shutil

import numpy as np
import pytest
import torch

from model_store import ModelNotFound
from model_store.description import describe_folder
from vigface.generator.artifact import Generator
from vigface.prototype_set import prototype_set_digest


def test_description_matches_the_loaded_generator_without_loading_it(tiny_generator, tmp_path):
    desc = describe_folder("tiny", tiny_generator)
    gen = Generator.load(tiny_generator)
    assert desc.virtual_prototypes == gen.fr.virtual_prototypes.shape[0]
    assert desc.prototype_set == prototype_set_digest(gen.fr.virtual_prototypes.numpy())
    assert desc.kind == "generator" and desc.pose_bank is not None
    assert len(desc.pose_bank.landmarks) == len(gen.pose_landmarks)

    # a copy saved in fp16 (a bundle) under another name holds the same prototype set ...
    gen.save(tmp_path / "copy", dtype=torch.float16)
    assert describe_folder("copy", tmp_path / "copy").prototype_set == desc.prototype_set
    assert (
        json.loads((tmp_path / "copy" / "fr" / "model_card.json").read_text())["prototype_set"]
        == desc.prototype_set
    )
    # ... and a change to one row is another set
    gen.fr.virtual_prototypes[3] += 0.5
    gen.save(tmp_path / "changed")
    assert describe_folder("changed", tmp_path / "changed").prototype_set != desc.prototype_set


def test_digest_ignores_scale_and_sees_order():
    w = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert prototype_set_digest(w) == prototype_set_digest(2 * w)  # length is not identity
    assert prototype_set_digest(w) == prototype_set_digest(w.astype(np.float16))
    assert prototype_set_digest(w) != prototype_set_digest(w[::-1])


def test_a_folder_without_prototypes_is_not_a_model(tiny_generator, tmp_path):
    shutil.copytree(tiny_generator, tmp_path / "broken")
    (tmp_path / "broken" / "fr" / "prototypes.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="no prototypes"):
        describe_folder("broken", tmp_path / "broken")


def test_the_api_process_imports_neither_torch_nor_diffusers():
    """Validating orders needs descriptions only; workers alone load the generator."""
    import subprocess
    import sys

    code = "import sys, app.main; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

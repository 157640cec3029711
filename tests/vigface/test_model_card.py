"""The typed model card: what the code reads of a generator, validated on load; measurements
live beside it in measurements/ and no code reads them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app as cli
from model_store import BUNDLED
from vigface.model_card import (
    MEASUREMENTS_DIR,
    ModelCard,
    ModelCardError,
    load_card,
    migrate_card,
    validate_card,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_bundled_card_validates_and_is_small():
    if not (BUNDLED / "demo" / "model_card.json").is_file():
        pytest.skip("no bundled demo model")
    card = load_card(BUNDLED / "demo")
    assert card["sampler_defaults"]["guidance"] > 0 and card["filters"]["tau_leak"] > 0
    # what code reads only (capacity.judge is the one summary the capacity curve adds): the
    # curves, tables and notes live in measurements/
    # the card grew by its training data and terms (issue 46), nothing measured
    assert (BUNDLED / "demo" / "model_card.json").stat().st_size < 12_500
    assert (BUNDLED / "demo" / MEASUREMENTS_DIR / "judge_capacity.json").is_file()
    assert (BUNDLED / "demo" / MEASUREMENTS_DIR / "utility.json").is_file()


def test_a_card_with_an_unknown_key_or_a_bad_value_fails_naming_it(tiny_generator, tmp_path):
    entry = tmp_path / "gen"
    shutil.copytree(tiny_generator, entry)
    card = json.loads((entry / "model_card.json").read_text())
    (entry / "model_card.json").write_text(json.dumps({**card, "utility": {"rows": []}}))
    with pytest.raises(ModelCardError, match="utility: Extra inputs are not permitted"):
        load_card(entry)
    bad = {**card, "sampler_defaults": {"guidance": "high"}}
    with pytest.raises(ModelCardError, match="sampler_defaults.guidance"):
        validate_card(bad, "x")
    with pytest.raises(ModelCardError, match="filters.tau_leak"):
        validate_card({**card, "filters": {"tau_leak": 2.0, "tau_consistency": 0.5}}, "x")


def test_migrate_card_moves_what_the_code_does_not_read(tiny_generator, tmp_path):
    entry = tmp_path / "gen"
    shutil.copytree(tiny_generator, entry)
    card = json.loads((entry / "model_card.json").read_text())
    legacy = {
        **card,
        "recommended_guidance": 2.5,
        "utility": {"rows": [1, 2]},
        "judge": {"name": "dlib", "real": {"within": 0.3}, "measured": {"x": 1}},
    }
    (entry / "model_card.json").write_text(json.dumps(legacy))
    r = CliRunner().invoke(cli, ["models", "migrate-card", str(entry)])
    assert r.exit_code == 0, r.output
    assert "judge.measured" in r.output and "utility" in r.output
    migrated = load_card(entry)
    assert migrated["sampler_defaults"]["guidance"] == 2.5  # folded into the defaults
    assert migrated["judge"] == {"name": "dlib", "real": {"within": 0.3}, "real_at": {}}
    measured = entry / MEASUREMENTS_DIR
    assert json.loads((measured / "utility.json").read_text()) == {"rows": [1, 2]}
    assert json.loads((measured / "judge.measured.json").read_text()) == {"x": 1}
    assert migrate_card(entry) == []  # nothing left to move
    r = CliRunner().invoke(cli, ["models", "migrate-card", str(tmp_path / "nowhere")])
    assert r.exit_code != 0 and "ENTRY" in r.output or "nowhere" in r.output


def test_no_code_reads_a_measurement():
    """Measurement names (the files in the bundled measurements/) appear in no code as a key
    of a generator's card: the code reads only ModelCard's fields. (Stage-1 and upsampler
    artifacts keep cards of their own, written by their trainers: ``fr.card``,
    ``stage.card`` and the like are not this card.)"""
    names = sorted(
        {p.stem.split(".")[-1] for p in (BUNDLED / "demo" / MEASUREMENTS_DIR).glob("*.json")}
        - set(ModelCard.model_fields)
    )
    assert names
    code = subprocess.run(
        ["git", "ls-files", "vigface", "app", "workers", "model_store", "bench"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    hits = []
    for path in code:
        if not path.endswith(".py") or path.endswith("model_card.py"):
            continue
        for line in (ROOT / path).read_text().splitlines():
            if re.search(r"\b(fr|refit|matched|stage|out|model)\.card\b", line):
                continue
            for name in names:
                if re.search(rf"""card\b[^\n]{{0,40}}["']{re.escape(name)}["']""", line):
                    hits.append((path, name))
    assert not hits, hits

"""Every delivery carries a dataset card for people (README.md, Hugging Face layout) and one
for tools (croissant.json, validated by mlcroissant), both from one record; a model without
stated training data and terms cannot be added to a store."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()
TERMS = "vigface/configs/terms_lfw112.yaml"


@pytest.fixture(scope="module")
def delivered(tiny_generator, tmp_path_factory):
    out = tmp_path_factory.mktemp("delivery") / "ds"
    r = runner.invoke(
        app,
        ["generate", "--model", str(tiny_generator), "--identities", "3",
         "--images-per-identity", "2", "--steps", "2", "--batch-size", "4", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_readme_front_matter_names_license_size_sources_and_task(delivered):
    text = (delivered / "README.md").read_text()
    header = _front_matter(text)
    assert header["license"] == "other" and header["license_name"] == "research-only"
    assert header["size_categories"] == ["n<1K"]
    assert header["task_categories"][0] == "image-classification"
    assert "face-recognition" in header["task_ids"]
    assert header["source_datasets"]  # the model's training data, or "original"
    for section in ("## Uses", "## Personal and sensitive information", "## Terms"):
        assert section in text
    assert "no identification" in text.lower() or "identifying, tracking" in text


def test_the_croissant_card_validates_and_reads_the_records(delivered):
    mlc = pytest.importorskip("mlcroissant")
    ds = mlc.Dataset(jsonld=delivered / "croissant.json")
    draws = list(ds.records("draws"))
    assert len(draws) >= 6
    faces = list(ds.records("faces"))
    assert len(faces) == 6 and all(f["faces/image"] is not None for f in faces)
    card = json.loads((delivered / "croissant.json").read_text())
    assert card["rai:dataCollectionType"] == "Synthetic"
    assert "privacy filter" in card["rai:personalSensitiveInformation"]


def test_the_report_links_both_cards_and_states_the_terms(delivered):
    html = (delivered / "report.html").read_text()
    assert 'href="README.md"' in html and 'href="croissant.json"' in html
    report = json.loads((delivered / "report.json").read_text())
    prov = report["provenance"]
    assert prov["terms"]["research_only"] is True  # the tiny model states no terms
    assert len(prov["model_sha256"]) == 64


def test_research_only_sources_make_research_only_deliveries():
    from vigface.model_card import delivery_terms

    data = yaml.safe_load(open(TERMS))
    claimed = {**data["terms"], "datasets_license": "CC-BY-4.0"}
    terms = delivery_terms({"training_data": data["training_data"], "terms": claimed})
    assert terms["license"] == "other" and terms["research_only"]
    open_source = [{**data["training_data"][0], "research_only": False}]
    terms = delivery_terms({"training_data": open_source, "terms": claimed})
    assert terms["license"] == "CC-BY-4.0" and not terms["research_only"]


def test_the_bundled_models_state_their_training_data_and_terms():
    from model_store import resolve
    from vigface.model_card import load_card, missing_terms

    for name in ("demo", "jit112"):
        card = load_card(resolve(name))
        assert missing_terms(card) is None, name
        assert all(s["research_only"] for s in card["training_data"])


def test_models_add_refuses_a_model_without_terms_and_takes_them_from_a_file(
    tiny_generator, tmp_path
):
    store = tmp_path / "store"
    store.mkdir()
    r = runner.invoke(app, ["models", "add", str(tiny_generator), "--name", "g", "--store",
                            str(store)])  # fmt: skip
    assert r.exit_code != 0 and "training data" in r.output
    assert not (store / "g").exists() and not list(store.glob(".*"))  # nothing left behind
    bad = tmp_path / "bad.yaml"
    bad.write_text("training_data: []\nterms: {}\n")
    r = runner.invoke(app, ["models", "add", str(tiny_generator), "--name", "g", "--store",
                            str(store), "--terms", str(bad)])  # fmt: skip
    assert r.exit_code != 0 and "--terms" in r.output
    r = runner.invoke(app, ["models", "add", str(tiny_generator), "--name", "g", "--store",
                            str(store), "--terms", TERMS])  # fmt: skip
    assert r.exit_code == 0, r.output
    card = json.loads((store / "g" / "model_card.json").read_text())
    assert card["terms"]["datasets_license"] == "other"
    shutil.rmtree(store / "g")

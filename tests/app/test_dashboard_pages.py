"""Dashboard pages through the ASGI app (no browser): rendering, auth, validation, isolation."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.auth import create_key, create_team
from conftest import form_csrf, ui_login
from jobstore.settings import Settings
from model_store.loader import load_generator
from workers.embedded import EmbeddedWorker


@pytest.fixture
def ui(tiny_generator, tmp_path, monkeypatch):
    return make_ui(tiny_generator, tmp_path, monkeypatch)


def make_ui(model, tmp_path, monkeypatch):
    """The app, two teams' keys and an in-process worker, serving generator folder ``model``."""
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(model.parent))
    load_generator.cache_clear()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        storage_url=f"file://{tmp_path}/store",
        work_dir=tmp_path / "w",
        default_model=model.name,
        sampler_batch_size=4,
        public_url="http://testserver",
    )
    api = create_app(settings)
    with api.state.sessions() as db:
        create_team(db, "alpha", quota=500)
        create_team(db, "beta", quota=500)
        keys = {t: create_key(db, t) for t in ("alpha", "beta")}
    return api, keys, EmbeddedWorker(api.state.sessions, settings)


def login(client, key):
    return ui_login(client, key)


def csrf(client, path="/ui/orders/new"):
    return form_csrf(client, path)


def test_pages_render_and_orders_go_through_the_api_path(ui):
    api, keys, worker = ui
    c = login(TestClient(api), keys["alpha"])
    assert "No jobs" in c.get("/ui/jobs").text
    page = c.get("/ui/orders/new").text
    assert 'id="free">40<' in page and 'id="quota">500<' in page
    token = csrf(c)

    def order(**fields):
        form = {"csrf": token, "images_per_identity": "2", "formats": "imagefolder"} | fields
        return c.post("/ui/orders", data=form, follow_redirects=False)

    r = order(identities="0", pose_preset="match_training")
    assert r.status_code == 422 and 'data-field="identities"' in r.text
    r = order(identities="2", steps="2", pose_preset="custom", bin_frontal="60")
    assert r.status_code == 422 and "sum to 1" in r.text
    r = order(identities="300", pose_preset="frontal")
    assert r.status_code == 429 and "quota" in r.text
    assert 'name="upsample"' in page and "model default (off)" in page
    r = order(identities="2", steps="2", pose_preset="frontal", upsample="true")
    assert r.status_code == 422 and 'data-field="upsample"' in r.text and "no upsampler" in r.text
    r = order(identities="2", steps="2", pose_preset="frontal", upsample="maybe")
    assert r.status_code == 422 and 'data-field="upsample"' in r.text
    r = order(identities="2", steps="2", pose_preset="frontal")
    assert r.status_code == 303
    job_id = r.headers["location"].rsplit("/", 1)[1]
    while worker.run_once():
        pass
    detail = c.get(f"/ui/jobs/{job_id}").text
    assert "succeeded" in detail and "<svg" in detail and detail.count('alt="sample"') == 4
    assert (
        c.get("/v1/jobs", headers={}).json()["items"][0]["id"] == job_id
    )  # cookie works on the API
    assert "Orthogonality" in c.get("/ui/models").text
    assert (
        c.post(
            "/ui/orders", data={"csrf": "forged", "identities": "1", "images_per_identity": "1"}
        ).status_code
        == 403
    )

    other = login(TestClient(api), keys["beta"])
    assert job_id not in other.get("/ui/jobs").text
    assert other.get(f"/ui/jobs/{job_id}").status_code == 404
    assert (
        TestClient(api).get("/ui/jobs", follow_redirects=False).headers["location"] == "/ui/login"
    )


def test_a_failed_job_can_be_retried_from_its_page(ui):
    from jobstore.models import Job, Shard

    api, keys, worker = ui
    c = login(TestClient(api), keys["alpha"])
    order = {"identities": 2, "images_per_identity": 2, "steps": 2, "tau_leak": 1.0,
             "tau_consistency": -1.0}  # fmt: skip
    job = c.post("/v1/jobs", json=order, headers={"X-API-Key": keys["alpha"]}).json()
    with api.state.sessions() as db:  # as a shard failure leaves it
        j = db.get(Job, job["id"])
        j.status, j.error = "failed", "shard 0: disk full"
        for s in db.query(Shard).filter_by(job_id=job["id"]):
            s.status, s.attempts = "failed", 1
        db.commit()
    page = c.get(f"/ui/jobs/{job['id']}").text
    assert "disk full" in page and "Retry from where it stopped" in page
    token = csrf(c, f"/ui/jobs/{job['id']}")
    r = c.post(f"/ui/jobs/{job['id']}/retry", data={"csrf": "stale"}, follow_redirects=False)
    assert r.status_code == 403
    r = c.post(f"/ui/jobs/{job['id']}/retry", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    while worker.run_once():
        pass
    done = c.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["retries"] == 1
    other = login(TestClient(api), keys["beta"])
    assert other.post(f"/ui/jobs/{job['id']}/retry", data={"csrf": csrf(other)}).status_code == 404


def test_the_job_page_shows_the_independent_judge_at_real_peoples_image_counts(
    tiny_generator, tmp_path, monkeypatch
):
    """A calibrated card (held-out people with 2-3 images each) and a 2-image-per-identity
    order: the report compares both sides capped at 2 images and the page says so."""
    import json
    import shutil

    model = tmp_path / "models" / "gen"
    shutil.copytree(tiny_generator, model, ignore=shutil.ignore_patterns("checkpoints"))
    card = json.loads((model / "model_card.json").read_text())
    capped = {"within": 0.3, "between": 0.31, "identities": 2, "resolution": 16}
    card["judge"] = {
        "name": "dlib_face_recognition_resnet_model_v1",
        "resolution": 16,
        "real": capped | {"between": 0.3, "repeats": 2, "seed": 0, "counts": [2, 3, 2],
                          "capped": {"2": capped}},
    }  # fmt: skip
    (model / "model_card.json").write_text(json.dumps(card))
    api, keys, worker = make_ui(model, tmp_path, monkeypatch)
    c = login(TestClient(api), keys["alpha"])
    form = {"csrf": csrf(c), "identities": "2", "images_per_identity": "2", "steps": "2",
            "formats": "imagefolder", "pose_preset": "frontal"}  # fmt: skip
    job_id = c.post("/ui/orders", data=form, follow_redirects=False).headers["location"]
    while worker.run_once():
        pass
    judged = c.get(f"/v1/jobs/{job_id.rsplit('/', 1)[1]}/report").json()["judge"]
    assert judged["synthetic"]["counts_matched"] and judged["real"]["between"] == 0.31
    assert judged["synthetic"]["images_per_identity"]["cap"] == 2
    page = c.get(job_id).text
    assert "What an independent FR model sees" in page and "image counts (" in page
    assert "over every image of this dataset" in page


def test_the_models_page_shows_what_the_card_says(ui):
    api, keys, worker = ui
    c = login(TestClient(api), keys["alpha"])
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c.get("/ui/models").text))
    assert "Trained on" in page and "Privacy filter tau_leak 1.0, tau_consistency -1.0" in page


def test_the_models_page_shows_the_judged_capacity_and_its_curve(tiny_generator, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    import shutil

    from vigface.evaluation.capacity import record_judge_capacity

    entry = tmp_path / "store" / "judged"
    shutil.copytree(tiny_generator, entry)
    png = tmp_path / "curve.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\ncurve")
    summary = {"judge": "dlib", "identities": 5000, "measured_up_to": 20000, "bounded": True,
               "images_per_identity": 2, "real_resolution": 32, "tolerance_sigmas": 2.0,
               "measured_on": "runs/store/demo100k"}  # fmt: skip
    record_judge_capacity(entry, summary, {"rows": []}, png)
    api, keys, _ = make_ui(entry, tmp_path, monkeypatch)
    c = login(TestClient(api), keys["alpha"])
    html = c.get("/ui/models").text
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Identities as distinct as real people 5,000 (outside judge dlib" in page
    assert "measured up to 20,000 identities" in page and "5,000 or more" not in page
    assert 'src="/ui/models/judged/capacity.png"' in html
    r = c.get("/ui/models/judged/capacity.png")
    assert r.status_code == 200 and r.content == png.read_bytes()
    assert c.get("/ui/models/nope/capacity.png").status_code == 404
    # a card whose figure points outside its entry is not served
    card = json.loads((entry / "model_card.json").read_text())
    card["capacity"]["judge"]["figure"] = "../../curve.png"
    (entry / "model_card.json").write_text(json.dumps(card))
    load_generator.cache_clear()
    assert c.get("/ui/models/judged/capacity.png").status_code == 404


def test_a_job_shows_the_per_pose_thresholds_it_ran_with(tiny_generator, tmp_path, monkeypatch):
    """A card calibrated per pose group: the job records one threshold per yaw bin, and its
    page and report show them."""
    import shutil

    entry = tmp_path / "store" / "posed"
    shutil.copytree(tiny_generator, entry)
    card = json.loads((entry / "model_card.json").read_text())
    card["filters"]["tau_consistency_by_pose"] = {
        "1": {
            "frontal": {"tau_consistency": -0.5, "guidance": 4.0},
            "35_60": {"tau_consistency": -0.75, "guidance": 4.0},
        }
    }
    (entry / "model_card.json").write_text(json.dumps(card))
    api, keys, worker = make_ui(entry, tmp_path, monkeypatch)
    c = login(TestClient(api), keys["alpha"])
    r = c.post("/v1/jobs", json={"identities": 2, "images_per_identity": 2, "steps": 2,
                                 "guidance": 4.0, "pose": "frontal"},
               headers={"Authorization": f"Bearer {keys['alpha']}"})  # fmt: skip
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    while worker.run_once():
        pass
    page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c.get(f"/ui/jobs/{job_id}").text))
    assert "succeeded" in page
    assert "per yaw bin: left_60+ -0.750, left_35_60 -0.750, left_15_35 -0.500" in page
    assert "frontal -0.500" in page  # -1 (pooled) + the group's calibrated distance
    reports = list((tmp_path / "store" / "jobs").rglob("report.json"))
    assert len(reports) == 1
    thresholds = json.loads(reports[0].read_text())["thresholds"]
    assert thresholds["tau_consistency_by_pose"]["frontal"] == -0.5


def test_an_order_without_guidance_runs_at_the_cards_value_through_api_dashboard_and_cli(
    tiny_generator, tmp_path, monkeypatch
):
    """One model card recommends g 2.5; an order that leaves guidance out records and runs
    2.5 whether it came through the REST API, the dashboard form or ``vigface generate``."""
    import json
    import re
    import shutil

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from app.cli import app as cli

    model = tmp_path / "store" / "g25"
    shutil.copytree(tiny_generator, model)
    card = json.loads((model / "model_card.json").read_text())
    card["sampler_defaults"] = {"guidance": 2.5, "steps": 2}
    (model / "model_card.json").write_text(json.dumps(card))
    api, keys, worker = make_ui(model, tmp_path, monkeypatch)
    c = TestClient(api)
    order = {"identities": 1, "images_per_identity": 1}

    by_api = c.post("/v1/jobs", json=order, headers={"X-API-Key": keys["alpha"]}).json()
    assert by_api["spec"]["guidance"] == 2.5 and by_api["spec"]["steps"] == 2

    login(c, keys["beta"])
    form_page = c.get("/ui/orders/new").text
    assert re.search(r'name="guidance"[^>]*value="2.5"', form_page), "form shows the card's"
    form = {"csrf": csrf(c), "identities": "1", "images_per_identity": "1"}
    form |= {"pose_preset": "match_training"}  # the form always sends its radio choice
    r = c.post("/ui/orders", data={**form, "formats": "imagefolder"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    by_form = c.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": keys["beta"]}).json()
    assert by_form["spec"]["guidance"] == 2.5

    out = tmp_path / "cli"
    args = ["generate", "--model", str(model), "--identities", "1", "--images-per-identity", "1"]
    r = CliRunner().invoke(cli, [*args, "--batch-size", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    by_cli = json.loads((out / "dataset_card.json").read_text())["spec"]
    assert by_cli["guidance"] == 2.5 and by_cli["steps"] == 2


def test_the_order_form_chooses_a_model_and_its_hints_follow_it(
    tiny_generator, tmp_path, monkeypatch
):
    """The form lists every generator; its hints (guidance range, identities left) are the
    chosen model's, and the order it places names that model."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_generator, store / "other")
    card = json.loads((store / "other" / "model_card.json").read_text())
    card["filters"]["tau_consistency_by_guidance"] = {"1": {"tau_consistency": -1.0},
                                                      "6": {"tau_consistency": -1.0}}  # fmt: skip
    (store / "other" / "model_card.json").write_text(json.dumps(card))
    api, keys, _ = make_ui(tiny_generator, tmp_path, monkeypatch)
    monkeypatch.setenv("VIGFACE_MODEL_STORE", f"{store}:{tiny_generator.parent}")
    c = login(TestClient(api), keys["alpha"])
    default = c.get("/ui/orders/new").text
    assert 'value="other"' in default and f'value="{tiny_generator.name}"' in default
    other = c.get("/ui/orders/new?model=other").text
    assert "1 to 6 (its filters" in other
    form = {"csrf": csrf(c, "/ui/orders/new?model=other"), "model": "other", "identities": "1",
            "images_per_identity": "1", "pose_preset": "match_training", "formats": "imagefolder",
            "steps": "1"}  # fmt: skip
    r = c.post("/ui/orders", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    job = c.get(r.headers["location"].replace("/ui/jobs/", "/v1/jobs/")).json()
    assert job["model"] == "other"

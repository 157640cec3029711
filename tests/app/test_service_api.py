"""The REST API with a real database (SQLite and PostgreSQL) and the embedded worker."""

import time

import pytest

from app.services.auth import create_key, create_team
from conftest import ORDER, auth, drain, toy_bin


def test_job_runs_to_completion_with_exact_counts(service):
    client, keys, worker, api = service
    r = client.post("/v1/jobs", json=ORDER, headers=auth(keys["alpha"]))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["images_requested"] == 6
    assert job["shards"] == {"queued": 2} and job["identities_allocated"] >= 3
    drain(worker)
    job = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["alpha"])).json()
    assert job["status"] == "succeeded", job
    assert job["images_done"] == 6 and job["shards"] == {"succeeded": 2}
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=auth(keys["alpha"])).json()
    assert report["dataset"]["num_classes"] == 3 and report["dataset"]["num_image"] == 6
    files = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=auth(keys["alpha"])).json()[
        "files"
    ]
    assert "recordio/train.rec" in files and "manifest.csv" in files
    assert sum(1 for f in files if f.startswith("imagefolder/")) == 6
    dl = client.get(
        files["dataset_card.json"].replace("http://testserver", ""), headers=auth(keys["alpha"])
    )
    assert dl.status_code == 200 and dl.json()["num_image"] == 6
    # no virtual identity is sold twice
    r2 = client.post("/v1/jobs", json=ORDER, headers=auth(keys["beta"])).json()
    drain(worker)
    import csv
    import io

    def protos(job_id, key):
        f = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth(key)).json()["files"][
            "manifest.csv"
        ]
        rows = csv.DictReader(
            io.StringIO(client.get(f.replace("http://testserver", ""), headers=auth(key)).text)
        )
        return {r["prototype_id"] for r in rows}

    assert not protos(job["id"], keys["alpha"]) & protos(r2["id"], keys["beta"])
    models = client.get("/v1/models", headers=auth(keys["alpha"])).json()
    assert models[0]["free_virtual_identities"] < models[0]["virtual_identities"]
    assert "vigface_jobs" in client.get("/metrics").text
    job_record = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["alpha"])).json()
    workers = job_record["progress"]["workers"]
    assert workers and all(w["img_per_s"] > 0 for w in workers.values())


@pytest.mark.parametrize(
    "field,value",
    [
        ("identities", 0),
        ("identities", 100_001),
        ("images_per_identity", 0),
        ("images_per_identity", 1001),
        ("guidance", -1),
        ("guidance", 21),
        ("steps", 0),
        ("steps", 201),
        ("timestep_spacing", "last"),
        ("seed", -1),
        ("priority", 10),
        ("tau_leak", 1.5),
        ("formats", ["tfrecord"]),
        ("pose", {"frontal": 0.4}),
        ("pose", "sideways"),
        ("webhook_url", "ftp://x"),
        ("colour", "red"),
    ],
)
def test_every_bound_is_validated_before_queueing(service, field, value):
    client, keys, worker, api = service
    r = client.post("/v1/jobs", json={**ORDER, field: value}, headers=auth(keys["alpha"]))
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"])
    assert client.get("/v1/jobs", headers=auth(keys["alpha"])).json()["items"] == []


def test_teams_do_not_see_each_other(service):
    client, keys, worker, api = service
    job = client.post("/v1/jobs", json=ORDER, headers=auth(keys["alpha"])).json()
    for path in ("", "/report", "/artifacts"):
        assert (
            client.get(f"/v1/jobs/{job['id']}{path}", headers=auth(keys["beta"])).status_code == 404
        )
    assert (
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys["beta"])).status_code == 404
    )
    assert client.get("/v1/jobs", headers=auth(keys["beta"])).json()["items"] == []
    assert len(client.get("/v1/jobs", headers=auth(keys["ops"])).json()["items"]) == 1
    assert client.get("/v1/jobs", headers=auth("vgf_wrong")).status_code == 401


def test_idempotency_key(service):
    client, keys, worker, api = service
    h = {**auth(keys["alpha"]), "Idempotency-Key": "order-1"}
    a = client.post("/v1/jobs", json=ORDER, headers=h)
    b = client.post("/v1/jobs", json=ORDER, headers=h)
    assert a.status_code == 202 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    c = client.post("/v1/jobs", json={**ORDER, "seed": 8}, headers=h)
    assert c.status_code == 409 and "Idempotency-Key" in c.text
    assert len(client.get("/v1/jobs", headers=auth(keys["alpha"])).json()["items"]) == 1


def test_quota_is_checked_at_submission(service):
    client, keys, worker, api = service
    with api.state.sessions() as db:
        create_team(db, "small", quota=10)
        key = create_key(db, "small")
    assert client.post("/v1/jobs", json=ORDER, headers=auth(key)).status_code == 202
    r = client.post("/v1/jobs", json=ORDER, headers=auth(key))
    assert r.status_code == 429 and "quota" in r.text


def test_cancel_queued_and_running_jobs(service):
    client, keys, worker, api = service
    queued = client.post("/v1/jobs", json=ORDER, headers=auth(keys["alpha"])).json()
    for _ in range(2):  # idempotent
        r = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth(keys["alpha"]))
        assert r.status_code == 200 and r.json()["status"] == "canceled"
    big = {**ORDER, "identities": 2, "images_per_identity": 40, "steps": 30}
    job = client.post("/v1/jobs", json=big, headers=auth(keys["alpha"])).json()
    worker.start()
    deadline = time.time() + 60
    while (
        client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["alpha"]))
        .json()["progress"]
        .get("sampled", 0)
        == 0
    ):
        assert time.time() < deadline
        time.sleep(0.05)
    assert (
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys["alpha"])).json()["status"]
        == "canceled"
    )
    while True:
        j = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["alpha"])).json()
        if "running" not in j["shards"]:
            break
        assert time.time() < deadline
        time.sleep(0.05)
    assert j["status"] == "canceled" and j["images_done"] < 80 and "succeeded" not in j["shards"]


def test_health_and_readiness(service):
    client, keys, worker, api = service
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] == "ok"
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_status_polls_share_an_answer_for_the_ttl_and_writes_clear_it(service):
    """Production default: polls within VIGFACE_STATUS_CACHE_SECONDS share one answer (a
    worker's progress shows a second later); a write through the API shows at once."""
    from app.services import cache
    from jobstore.models import Job

    client, keys, worker, api = service
    cache.configure(auth_seconds=2.0, status_seconds=1.0)
    h = auth(keys["alpha"])
    job = client.post("/v1/jobs", json=ORDER, headers=h).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=h).json()["status"] == "queued"
    with api.state.sessions() as db:  # as a worker would, behind the API's back
        db.get(Job, job["id"]).images_done = 1
        db.commit()
    assert client.get(f"/v1/jobs/{job['id']}", headers=h).json()["images_done"] == 0  # cached
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["beta"])).status_code == 404
    time.sleep(1.1)
    assert client.get(f"/v1/jobs/{job['id']}", headers=h).json()["images_done"] == 1
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
    assert client.get(f"/v1/jobs/{job['id']}", headers=h).json()["status"] == "canceled"
    listed = client.get("/v1/jobs", headers=h).json()["items"]
    assert listed[0]["status"] == "canceled"


def test_a_job_can_ask_for_the_utility_probe_on_registered_benchmarks(service, tmp_path):
    client, keys, worker, api = service
    h = auth(keys["alpha"])
    r = client.post("/v1/jobs", json={**ORDER, "evaluate_on": ["toy"]}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "evaluate_on"
    assert "add-benchmark" in r.json()["detail"][0]["message"]
    api.state.store.put_file("benchmarks/toy.bin", toy_bin(tmp_path / "toy.bin"))
    no_folder = {**ORDER, "formats": ["recordio"], "evaluate_on": ["toy"]}
    r = client.post("/v1/jobs", json=no_folder, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "evaluate_on"
    api.state.settings.probe_steps = 4
    job = client.post("/v1/jobs", json={**ORDER, "evaluate_on": ["toy"]}, headers=h).json()
    assert job["evaluate_on"] == ["toy"]
    drain(worker)
    job = client.get(f"/v1/jobs/{job['id']}", headers=h).json()
    assert job["status"] == "succeeded", job
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=h).json()
    toy = report["utility"]["benchmarks"]["toy"]
    assert 0.0 <= toy["accuracy"] <= 1.0 and toy["pairs"] == 20
    assert report["utility"]["recipe"]["steps"] == 4
    assert (
        report["utility"]["train"]["images"] == ORDER["identities"] * ORDER["images_per_identity"]
    )
    links = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=h).json()["files"]
    html = client.get(links["report.html"].replace("http://testserver", ""), headers=h).text
    assert "What the dataset is worth" in html


def test_the_latent_model_is_sold_at_its_calibrated_defaults(service):
    """latent112's card is calibrated: an order that names only the model and a 35-60 degree
    pose is admitted with the card's sampler (turned faces at their own pose guidance) and
    each yaw bin held to the threshold calibrated at the pose guidance it is drawn at."""
    from model_store.loader import open_generator

    card = open_generator("latent112").card
    client, keys, worker, api = service
    pose = {"left_35_60": 0.5, "right_35_60": 0.5}
    body = {k: v for k, v in ORDER.items() if not k.startswith("tau_") and k != "steps"}
    r = client.post("/v1/jobs", json=body | {"model": "latent112", "pose": pose},
                    headers=auth(keys["alpha"]))  # fmt: skip
    assert r.status_code == 202, r.text
    spec = r.json()["spec"]
    defaults = card["sampler_defaults"]
    assert spec["steps"] == defaults["steps"] and spec["guidance"] == defaults["guidance"]
    assert spec["turned_pose_guidance"] == defaults["turned_pose_guidance"] != 1.0
    assert spec["pose_guidance"] == 1.0
    tables = card["filters"]["tau_consistency_by_pose"]
    turned_at = f"{defaults['turned_pose_guidance']:g}"
    by_bin = spec["tau_consistency_by_pose"]
    assert by_bin["left_35_60"] == tables[turned_at]["35_60"]["tau_consistency"]
    assert by_bin["frontal"] == tables["1"]["frontal"]["tau_consistency"]
    assert spec["tau_leak"] == card["filters"]["tau_leak"] and spec["face_gate"] is True

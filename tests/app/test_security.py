"""Inputs an attacker or a careless client sends: each gets a 4xx naming the field, and a
dashboard cookie cannot change anything through the REST API."""

import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.auth import create_key, create_team
from conftest import ui_login
from jobstore.settings import Settings
from model_store.description import describe
from model_store.loader import load_generator


@pytest.fixture
def client(tiny_generator, tmp_path, monkeypatch):
    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(tiny_generator.parent))
    load_generator.cache_clear()
    describe.cache_clear()
    settings = Settings(home=tmp_path, default_model=tiny_generator.name, public_url="http://t")
    app = create_app(settings)
    with app.state.sessions() as db:
        create_team(db, "alpha", quota=1000)
        key = create_key(db, "alpha")
    return TestClient(app), key, tiny_generator.name


ORDER = {"identities": 1, "images_per_identity": 1, "steps": 1}


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"identities": True}, "identities"),
        ({"identities": "2"}, "identities"),
        ({"images_per_identity": 1.5}, "images_per_identity"),
        ({"guidance": "NaN"}, "guidance"),
        ({"pose": {"frontal": "NaN"}}, "pose"),
        ({"model": "/tmp"}, "model"),
        ({"model": "../../etc"}, "model"),
        ({"model": "x" * 100_000}, "model"),
        ({"webhook_url": "http://169.254.169.254/latest"}, "webhook_url"),
        ({"webhook_url": "http://127.0.0.1:6379/"}, "webhook_url"),
        ({"webhook_url": "http://localhost/hook"}, "webhook_url"),
        ({"webhook_url": "http://10.0.0.7/hook"}, "webhook_url"),
        ({"webhook_url": "http://[::1]/hook"}, "webhook_url"),
        # IPv6 spellings of loopback: IPv4-compatible, NAT64, 6to4, IPv4-mapped
        ({"webhook_url": "http://[::127.0.0.1]/hook"}, "webhook_url"),
        ({"webhook_url": "http://[::7f00:1]/hook"}, "webhook_url"),
        ({"webhook_url": "http://[64:ff9b::7f00:1]/hook"}, "webhook_url"),
        ({"webhook_url": "http://[2002:7f00:1::]/hook"}, "webhook_url"),
        ({"webhook_url": "http://[::ffff:127.0.0.1]/hook"}, "webhook_url"),
        ({"webhook_url": "http://[64:ff9b::a00:7]/hook"}, "webhook_url"),
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url"),
        ({"priority": 99}, "priority"),
        ({"identities": 0}, "identities"),
        ({"identities": 10**9}, "identities"),
        ({"formats": ["imagefolder"] * 50}, "formats"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_orders_are_4xx_naming_the_field(client, patch, field):
    c, key, _ = client
    r = c.post("/v1/jobs", json={**ORDER, **patch}, headers={"X-API-Key": key})
    assert 400 <= r.status_code < 500, r.text
    assert any(d["field"].split(".")[0] == field for d in r.json()["detail"]), r.text


def test_nan_in_raw_json_is_refused(client):
    c, key, _ = client
    body = '{"identities": 1, "images_per_identity": 1, "pose": {"frontal": NaN}}'
    r = c.post(
        "/v1/jobs", content=body, headers={"X-API-Key": key, "content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"].startswith("pose")


def test_oversized_bodies_and_headers(client):
    c, key, _ = client
    big = json.dumps({**ORDER, "pad": "x" * 2_000_000})
    r = c.post(
        "/v1/jobs", content=big, headers={"X-API-Key": key, "content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
    r = c.post("/v1/jobs", json=ORDER, headers={"X-API-Key": key, "Idempotency-Key": "k" * 300})
    assert r.status_code == 422 and "idempotency" in r.json()["detail"][0]["field"].lower()


def test_a_dashboard_cookie_reads_but_cannot_act_through_the_rest_api(client):
    c, key, _ = client
    job = c.post("/v1/jobs", json=ORDER, headers={"X-API-Key": key}).json()
    ui_login(c, key)
    assert c.get(f"/v1/jobs/{job['id']}").status_code == 200  # the pages poll with it
    r = c.post(f"/v1/jobs/{job['id']}/cancel")  # the cookie alone
    assert r.status_code == 401
    assert c.get(f"/v1/jobs/{job['id']}", headers={"X-API-Key": key}).json()["status"] == "queued"


def test_model_grid_route_serves_store_entries_only(client):
    c, key, name = client
    ui_login(c, key)
    for bad in ("..", "%2e%2e", "nonexistent"):
        r = c.get(f"/ui/models/{bad}/grids/x.png")
        assert r.status_code == 404, bad
    assert c.get(f"/ui/models/{name}/grids/..%2fmodel_card.json").status_code == 404


def test_revoked_keys_end_api_calls_and_dashboard_sessions(client, tmp_path):
    import os
    import subprocess
    import sys

    c, key, _ = client
    ui_login(c, key)
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 200
    from app.services.auth import revoke_key

    app = c.app
    with app.state.sessions() as db:
        with pytest.raises(ValueError, match="at least"):
            revoke_key(db, "vgf_")
        revoke_key(db, key[:12])
    assert c.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 401
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 303  # back to sign-in
    env = {**os.environ, "VIGFACE_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "admin", "revoke-key", "vgf_nothing"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no key starts with" in r.stderr


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(client):
    c, key, _ = client
    ui_login(c, key)
    stolen = dict(c.cookies)
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 200
    page = c.get("/ui/jobs").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    c.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    thief = TestClient(c.app, cookies=stolen)
    assert thief.get("/ui/jobs", follow_redirects=False).status_code == 303
    assert thief.get("/v1/jobs").status_code == 401


def test_a_session_never_acts_for_a_key_that_replaced_its_key_row(client):
    """A session is bound to the key itself: a new key (of another team) written into the
    old key's row id does not inherit the old cookie."""
    from jobstore.models import ApiKey, Team

    c, key, _ = client
    ui_login(c, key)
    with c.app.state.sessions() as db:
        row = db.query(ApiKey).one()
        old_id = row.id
        db.delete(row)
        db.commit()
        beta = Team(name="beta", monthly_quota=10)
        db.add(beta)
        db.flush()
        db.add(ApiKey(id=old_id, team_id=beta.id, key_hash="f" * 64, prefix="vgf_beta"))
        db.commit()
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 303
    assert c.get("/v1/jobs").status_code == 401


def test_file_routes_refuse_paths_outside_their_root(client):
    c, key, _ = client
    h = {"X-API-Key": key}
    job = c.post("/v1/jobs", json=ORDER, headers=h).json()
    for path in ("../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/x", "/etc/passwd"):
        r = c.get(f"/files/jobs/{job['id']}/{path}", headers=h)
        assert r.status_code == 404, (path, r.status_code)


def test_responses_match_the_documented_schema(client):
    c, key, _ = client
    h = {"X-API-Key": key}
    job = c.post("/v1/jobs", json=ORDER, headers=h).json()
    for ts in ("created_at",):
        assert job[ts].endswith("Z") or job[ts][-6] in "+-", job[ts]  # UTC with an offset
    r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    spec = c.get("/openapi.json").json()
    documented = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in documented and r.headers["content-type"] in documented
    error_ref = "#/components/schemas/ErrorOut"
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            for code in ("401", "422"):
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}, (method, path, code)
    r = c.get(f"/v1/jobs/{job['id']}x", headers=h)
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "job_id"
    r = c.delete("/v1/jobs", headers=h)
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    assert r.json()["detail"][0]["field"] == "path"


def test_a_page_of_another_site_cannot_sign_a_browser_in(client):
    """Login CSRF: a form posted from elsewhere carries no token of this browser's session
    (and, SameSite=Lax, no session cookie at all): refused, nothing signed in."""
    c, key, _ = client
    r = c.post("/ui/login", data={"api_key": key}, follow_redirects=False)
    assert r.status_code == 403 and r.json()["detail"][0]["field"] == "csrf"
    r = c.post("/ui/login", data={"api_key": key, "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 303  # still signed out
    ui_login(c, key)  # the form's own token signs in
    assert c.get("/ui/jobs", follow_redirects=False).status_code == 200


def test_pages_refuse_framing_and_carry_a_content_policy(client):
    c, key, _ = client
    page = c.get("/ui/login")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    api = c.get("/healthz")
    assert api.headers["x-frame-options"] == "DENY"
    assert api.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("quota", ["-1", "10000000000"])
def test_a_quota_outside_what_the_database_holds_is_refused(tmp_path, quota):
    import os
    import subprocess
    import sys

    env = {**os.environ, "VIGFACE_HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "admin", "create-team", "big", "--quota", quota],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--quota" in r.stderr


def test_create_team_bounds_the_quota_itself(client):
    c, _, _ = client
    with c.app.state.sessions() as db:
        with pytest.raises(ValueError, match="quota"):
            create_team(db, "huge", quota=10_000_000_000)
        assert create_team(db, "edge", quota=2**31 - 1).monthly_quota == 2**31 - 1


@pytest.mark.parametrize(
    "body,field,words",
    [
        ({"pose": {"left_35_60": -0.5}}, "pose.left_35_60", "at least 0"),
        ({"pose": 5}, "pose", "a valid string or a valid dictionary"),
        (b'{"identities": 1,', "body", "not valid JSON at character"),
        (b"\xff\xfe", "body", "not valid JSON"),
    ],
)
def test_refusals_name_the_field_as_the_client_wrote_it(client, body, field, words):
    """No pydantic internals (union tags, byte offsets as a field): the field a client sent,
    or the body when it is not JSON."""
    c, key, _ = client
    h = {"X-API-Key": key, "content-type": "application/json"}
    if isinstance(body, dict):
        r = c.post("/v1/jobs", json={**ORDER, **body}, headers=h)
    else:
        r = c.post("/v1/jobs", content=body, headers=h)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["field"] for d in detail] == [field], detail
    assert words in detail[0]["message"]
    assert "constrained" not in r.text and "dict[" not in r.text

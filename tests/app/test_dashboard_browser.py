"""The dashboard in a real browser: Playwright driving Debian's Chromium (headless) against
`vigface serve` with its embedded worker. Screenshots go to test-artifacts/screenshots/."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.local_service import running_service
from conftest import free_port

CHROMIUM = os.environ.get("VIGFACE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tiny_generator, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    port = free_port()
    env = {
        **os.environ,
        "VIGFACE_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite",
        "VIGFACE_STORAGE_URL": f"file://{tmp}/store",
        "VIGFACE_WORK_DIR": str(tmp / "w"),
        "VIGFACE_MODEL_STORE": str(tiny_generator.parent),
        "VIGFACE_DEFAULT_MODEL": tiny_generator.name,
        "VIGFACE_PORT": str(port),
        "VIGFACE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VIGFACE_SAMPLER_BATCH_SIZE": "4",
        "VIGFACE_SHARD_IDENTITIES": "2",
        "OMP_NUM_THREADS": "1",
    }

    def cli(*args):
        r = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1]

    keys = {}
    for team in ("alpha", "beta"):
        cli("admin", "create-team", team)
        keys[team] = cli("admin", "create-key", team)
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    with running_service(env, port) as url:
        yield url, keys


def sign_in(page, url, key):
    page.goto(url + "/ui/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/jobs")


def test_order_watch_report_download_cancel_and_isolation(browser, site, tmp_path):
    from playwright.sync_api import expect

    url, keys = site
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.goto(url + "/ui")  # where the README sends a new user
    assert "/ui/login" in page.url  # signed out: redirected
    page.screenshot(path=SHOTS / "0_sign_in.png")
    page.fill("#api_key", "vgf_not_a_key")
    page.click("button[type=submit]")
    assert page.locator(".field-error").inner_text() == "Unknown API key."
    sign_in(page, url, keys["alpha"])
    cookie = next(c for c in ctx.cookies() if c["name"] == "vigface_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # place an order with a mistake: the error is shown next to the field
    page.goto(url + "/ui/orders/new")
    assert page.locator("#free").inner_text() == "40" and page.locator("#quota").inner_text() != ""
    page.fill("#identities", "0")
    page.click("text=Place order")
    assert (
        "greater than or equal to 1"
        in page.locator(".field-error[data-field=identities]").inner_text()
    )
    page.fill("#identities", "3")
    page.fill("#images_per_identity", "2")
    # guidance left at the model's recommendation, shown in the form
    assert page.locator("#guidance").input_value() == "4.0"  # the tiny model's card: paper's
    assert "this model recommends 4.0" in page.content()
    page.fill("#steps", "3")
    page.check("input[value=recordio]")
    page.screenshot(path=SHOTS / "2_new_order.png", full_page=True)
    page.click("text=Place order")
    page.wait_for_url("**/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    # a locator assertion, not wait_for_function: the page's CSP (script-src 'self') refuses
    # the string evaluation that wait_for_function needs, as it should
    expect(page.locator("#job-live .pct")).to_have_text("100 %", timeout=120_000)
    page.wait_for_selector("#job-live .badge.succeeded", timeout=120_000)
    page.screenshot(path=SHOTS / "3_job_detail.png", full_page=True)
    assert page.locator("svg rect").count() > 0  # similarity histogram drawn
    assert page.locator(".samples img").count() == 6

    # download an artifact and the whole dataset as one archive, then open the report
    with page.expect_download() as dl:
        page.click("a:text('dataset_card.json')")
    card = json.loads(Path(dl.value.path()).read_text())
    assert card["num_image"] == 6 and card["num_classes"] == 3
    assert card["spec"]["guidance"] == 4.0  # the job recorded the value it used
    with page.expect_download() as dl:
        page.click("#archive")
    import tarfile

    with tarfile.open(dl.value.path()) as tar:
        jpgs = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert len(jpgs) == 6
    page.goto(page.locator("a:text('report.html')").get_attribute("href"))
    assert "Dataset report" in page.content()

    page.goto(url + "/ui/jobs")
    page.wait_for_selector(f"#job-{job_id} .badge.succeeded")
    page.screenshot(path=SHOTS / "1_jobs.png", full_page=True)

    # a second, larger order; cancel it with the confirmation dialog
    page.goto(url + "/ui/orders/new")
    page.fill("#identities", "4")
    page.fill("#images_per_identity", "60")
    page.fill("#steps", "40")
    page.click("text=Place order")
    page.wait_for_url("**/ui/jobs/*")
    big = page.url.rsplit("/", 1)[1]
    page.on("dialog", lambda d: d.accept())
    page.click("button.danger")
    page.wait_for_selector("#job-live .badge.canceled")

    page.goto(url + "/ui/models")
    assert page.locator("h2", has_text="Orthogonality").count() >= 1
    page.screenshot(path=SHOTS / "4_models.png", full_page=True)

    # another team sees none of it
    page.click("text=Sign out")
    sign_in(page, url, keys["beta"])
    assert page.locator("#jobs-table").count() == 0 and "No jobs" in page.content()
    for jid in (job_id, big):
        assert page.goto(f"{url}/ui/jobs/{jid}").status == 404
    ctx.close()

"""Screenshots of the four dashboard pages with a finished job from a real model (default:
the bundled ``demo``): starts ``vigface serve`` on a scratch database, orders a small dataset
through the order form, waits for it in the browser and saves PNGs.

    python bench/dashboard_screenshots.py --out test-artifacts/demo-screenshots
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from app.local_service import running_service


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--out", type=Path, default=Path("test-artifacts/demo-screenshots"))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vigface-shots-"))
    env = {
        **os.environ,
        "VIGFACE_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite",
        "VIGFACE_STORAGE_URL": f"file://{tmp}/store",
        "VIGFACE_WORK_DIR": str(tmp / "work"),
        "VIGFACE_DEFAULT_MODEL": args.model,
        "VIGFACE_PORT": str(args.port),
        "VIGFACE_PUBLIC_URL": f"http://127.0.0.1:{args.port}",
    }

    def cli(*a):
        return (
            subprocess.run(
                [sys.executable, "-m", "app.cli", *a],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    cli("admin", "create-team", "face-research")
    key = cli("admin", "create-key", "face-research")
    with running_service(env, args.port) as url:
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/ui/login")
            page.fill("#api_key", key)
            page.click("button[type=submit]")
            page.goto(url + "/ui/orders/new")
            page.fill("#identities", "6")
            page.fill("#images_per_identity", "4")
            page.check("input[value=recordio]")
            page.screenshot(path=args.out / "new_order.png", full_page=True)
            page.click("text=Place order")
            page.wait_for_url("**/ui/jobs/*")
            page.wait_for_selector("#job-live .badge.succeeded", timeout=900_000)
            page.screenshot(path=args.out / "job_detail.png", full_page=True)
            page.goto(url + "/ui/jobs")
            page.screenshot(path=args.out / "jobs.png", full_page=True)
            page.goto(url + "/ui/models")
            page.screenshot(path=args.out / "models.png", full_page=True)
            browser.close()
        print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()

"""The review app end to end, as a reviewer uses it: a lake made by the real behaviour-clustering job,
users created and the app started with the `lakelens` command, a real headless Chromium (Debian's,
driven by Playwright). Takes the screenshots under docs/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lakelens.pipelines.behavior_clusters import run_behavior_clusters

from .conftest import ENCODER_CONFIG, SPARE_DAY, TRAIN_DAYS

pytestmark = pytest.mark.slow

LAKELENS = str(Path(sys.executable).parent / "lakelens")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
USERS = {"ana": ("reviewer", "ana-reviews-clusters"), "vic": ("viewer", "vic-only-reads")}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_lake, tmp_path_factory):
    """The real job's two daily runs, copied into a lake of this module's own, served by `lakelens serve`."""
    lake, _, _ = trained_lake
    run_behavior_clusters(lake, TRAIN_DAYS[-1], ENCODER_CONFIG)  # reused when another test published it
    run_behavior_clusters(lake, SPARE_DAY, ENCODER_CONFIG)  # the next day: incremental, lineage, history
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(lake.root_uri, root / "lake", ignore=shutil.ignore_patterns("reviews"))
    auth = root / "users.json"
    for name, (role, password) in USERS.items():
        subprocess.run([LAKELENS, "users", "add", "--auth", str(auth), "--name", name, "--role", role],
                       input=password + "\n", text=True, check=True, capture_output=True, timeout=120)
    port = _free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([LAKELENS, "serve", "--lake", str(root / "lake"), "--auth", str(auth),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "serve.log").read_text()
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "lakelens serve did not answer"
                time.sleep(0.3)
        yield base, root / "lake"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _sign_in(page, base: str, name: str) -> None:
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", USERS[name][1])
    page.click("button[type=submit]")
    page.wait_for_selector("#clusters")


def test_a_reviewer_reviews_a_flagged_cluster_in_a_browser_and_a_viewer_cannot(served):
    from playwright.sync_api import sync_playwright

    base, lake_path = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    comment = "confirmed from the click-streams <b>not bold</b>"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if "script-src" in msg.text else None)
            page.on("request", lambda req: None if req.url.startswith(base) else problems.append(f"off-site: {req.url}"))

            page.goto(f"{base}/login")
            page.screenshot(path=str(SCREENSHOTS / "login.png"))
            _sign_in(page, base, "ana")
            rows = page.locator("#clusters tbody tr")
            assert rows.count() >= 1
            assert page.locator("#clusters tr.unreviewed").count() == rows.count()  # nobody has reviewed yet
            page.screenshot(path=str(SCREENSHOTS / "clusters.png"), full_page=True)

            # the riskiest flagged cluster: narrative, rules with their SQL and numbers, both plots
            key = rows.first.get_attribute("data-cluster-key")
            rows.first.locator("a").first.click()
            page.wait_for_url(f"{base}/clusters/{key}")
            page.wait_for_selector("#history-plot[data-rendered='1'] .main-svg", timeout=60_000)
            page.wait_for_selector("#map-plot[data-rendered='1'] .main-svg", timeout=60_000)
            narrative = page.locator("#narrative p").first.inner_text()
            rules = page.locator("#rules table.rules tbody tr")
            assert rules.count() >= 1 and "%" in narrative
            assert page.locator("#rules code.sql").first.inner_text().strip()
            assert page.locator("#history-plot .bars path, #history-plot .trace.bars").count() >= 1
            assert page.locator("#map-plot .scatterlayer .point").count() >= 2
            page.screenshot(path=str(SCREENSHOTS / "cluster.png"), full_page=True)

            # a member's click-stream, with the encoder's attention highlighted, and its expert features
            member = page.locator("#members tbody tr a").first
            transaction_id = member.inner_text()
            member.click()
            page.wait_for_selector("#clickstream")
            assert page.locator("#clickstream li.event").count() >= 1
            assert page.locator("#clickstream li.event.attended").count() >= 1
            assert "account_age_days" in page.locator("#features").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "transaction.png"), full_page=True)

            page.goto(f"{base}/clusters/{key}/members?page=1")
            assert page.locator("table.members tbody tr").count() >= 1
            page.screenshot(path=str(SCREENSHOTS / "members.png"), full_page=True)

            # the verdict: appended, shown in the history, escaped
            page.goto(f"{base}/clusters/{key}")
            page.check("input[name=verdict][value=fraud]")
            page.fill("textarea[name=comment]", comment)
            page.click("#verdict-form button[type=submit]")
            page.wait_for_url(f"{base}/clusters/{key}#reviews")
            history = page.locator("#review-history tbody tr")
            assert history.count() == 1 and comment in history.first.inner_text()
            assert page.locator("#review-history b").count() == 0
            page.locator("#reviews").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "verdict.png"))
            page.goto(f"{base}/")
            assert page.locator(f"#clusters tr[data-cluster-key='{key}'].verdict-fraud").count() == 1

            # a viewer: no form, and a POST with a valid session and CSRF token is still refused
            viewer = browser.new_context().new_page()
            _sign_in(viewer, base, "vic")
            viewer.goto(f"{base}/clusters/{key}")
            assert viewer.locator("#verdict-form").count() == 0
            status = viewer.evaluate("""async (key) => {
                const token = document.querySelector('meta[name="csrf-token"]').content;
                const reply = await fetch(`/api/clusters/${key}/reviews`, {method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                    body: JSON.stringify({verdict: 'legit', comment: 'a viewer tries'})});
                return reply.status; }""", key)
            assert status == 403
        finally:
            browser.close()
    assert not problems, problems

    # the verdict is in the lake, for SQL users too
    out = subprocess.run([LAKELENS, "sql", "--lake", str(lake_path), "--format", "json", "-c",
                          f"SELECT cluster_key, verdict, reviewer, comment FROM latest_reviews WHERE cluster_key = '{key}'"],
                         capture_output=True, text=True, check=True, timeout=180)
    rows = json.loads(out.stdout)
    assert rows == [{"cluster_key": key, "verdict": "fraud", "reviewer": "ana", "comment": comment}], rows
    assert transaction_id

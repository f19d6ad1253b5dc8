"""Open the report from disk in headless Chromium, click a thumbnail, check the group panel.

Runs in the default test run; skipped only when Debian's Chromium is not installed.
The screenshots go to ``$SOP_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from sumofparts.report.html import build_report, collect_payload

torch.set_num_threads(1)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SOP_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="headless Chromium is missing: apt-get install chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from test_html import tiny_synthetic

    sop, data = tiny_synthetic(n=8, train_steps=5)

    def grad_x_input(inputs, target):
        x = inputs.clone().requires_grad_(True)
        out = sop.backbone(x).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, x)
        return g * x

    payload = collect_payload(sop, data, n_examples=4, methods={"Grad×Input": grad_x_input})
    return build_report(payload, tmp_path_factory.mktemp("report") / "report.html")


def test_click_thumbnail_changes_group_panel(report):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (its Python package; "
                                                                 "the browser is Debian's chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="sop-chromium-")
    problems: list[str] = []
    requests: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS[1:],
                viewport={"width": 1200, "height": 1400})
            try:
                page = context.new_page()
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "assert") else None)
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("request", lambda r: requests.append(r.url))
                page.goto(report.resolve().as_uri())
                page.wait_for_selector("#thumbs button")
                thumbs = page.locator("#thumbs button")
                assert thumbs.count() == 4
                panel = page.locator("#group-panel")
                before_text, before_html = panel.inner_text(), panel.inner_html()
                assert page.get_attribute("#group-panel", "data-example") == "0"
                assert panel.locator(".card").count() == 8  # every group shown, best and zero-weight
                page.screenshot(path=str(ARTIFACTS / "report_before_click.png"), full_page=True)

                thumbs.nth(2).click()
                page.wait_for_function("document.getElementById('group-panel').dataset.example === '2'")
                after_text, after_html = panel.inner_text(), panel.inner_html()
                assert after_text != before_text and after_html != before_html
                assert "Test item 2" in after_text and "weight" in after_text
                assert "active" in (thumbs.nth(2).get_attribute("class") or "")
                assert page.locator("#methods-panel figure.map").count() == 2  # input + one method
                assert page.locator("#attribution-panel img").count() == 1
                # every image really decoded (data URIs)
                broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || "
                                       "i.naturalWidth === 0).length")
                assert broken == 0
                page.screenshot(path=str(ARTIFACTS / "report_after_click.png"), full_page=True)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert not problems, problems
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert not external, f"the report asked the network for {external}"
    assert (ARTIFACTS / "report_after_click.png").stat().st_size > 1000

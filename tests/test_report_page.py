"""The report page in a real headless browser (the system's Chromium, driven over its DevTools pipe):
the tiny model's videos decode and play in step, the page asks nothing of the network, logs no error,
and a screenshot shows the contact sheet; filtering, sorting and pages over thousands of videos.

``VIDCACHE_SCREENSHOTS=docs`` also copies the screenshots there (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from headless import Chromium, chromium
from PIL import Image
from typer.testing import CliRunner

from vidcache.cli import app

WIDTH, HEIGHT = 1280, 900
PAGE_BG = np.array([245, 246, 248])  # --bg of page.css


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    b = Chromium(exe, WIDTH, HEIGHT)
    yield b
    b.close()


@pytest.fixture(scope="module")
def renders(report_runs, tmp_path_factory) -> Path:
    """A copy of the tiny renders with the pages built at their default places."""
    root = tmp_path_factory.mktemp("pages") / "renders"
    shutil.copytree(report_runs["root"], root)
    here = os.getcwd()
    os.chdir(root.parent)  # relative folders, as a user types them (the page shows them)
    try:
        for args in (["renders/teacache", "--against", "renders/none"], ["renders"]):
            r = CliRunner().invoke(app, ["report", *args])
            assert r.exit_code == 0, r.output
    finally:
        os.chdir(here)
    return root


def load(browser: Chromium, page: Path) -> int:
    """Open ``page`` and wait for the pictures in view; returns where its events start."""
    since = len(browser.events)
    browser.open(page.as_uri())
    browser.js("""new Promise((ok, no) => { const t0 = Date.now(); const check = () => {
        const imgs = [...document.querySelectorAll('#grid img')]
          .filter(i => i.getBoundingClientRect().top < innerHeight);
        if (imgs.every(i => i.complete && i.naturalWidth > 0)) ok(true);
        else if (Date.now() - t0 > 10000) no(new Error('pictures did not load'));
        else setTimeout(check, 50); }; check(); })""")
    return since


def offline_and_clean(browser: Chromium, since: int) -> None:
    urls = browser.requested_urls(since)
    assert urls and all(u.split(":", 1)[0] in ("file", "data", "blob") for u in urls), urls
    assert browser.errors(since) == []


def shot(browser: Chromium, name: str, tmp_path: Path) -> np.ndarray:
    path = browser.screenshot(tmp_path / name)
    if os.environ.get("VIDCACHE_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["VIDCACHE_SCREENSHOTS"]) / name)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def rect(browser: Chromium, selector: str) -> tuple[slice, slice]:
    r = browser.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                   " return [r.top, r.bottom, r.left, r.right]; })()")
    top, bottom, left, right = (max(0, round(x)) for x in r)
    return slice(top, min(bottom, HEIGHT)), slice(left, min(right, WIDTH))


def coloured(pixels: np.ndarray) -> int:
    """Pixels of a saturated colour: the tiny model's red / green / blue objects."""
    return int(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 90).sum())


def test_harness_sees_network_requests_and_errors(browser, tmp_path):
    page = tmp_path / "control.html"
    page.write_text('<img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>')
    since = len(browser.events)
    browser.open(page.as_uri())
    with pytest.raises(AssertionError):
        offline_and_clean(browser, since)
    assert "http://127.0.0.1:9/x.png" in browser.requested_urls(since)
    assert any("boom" in e for e in browser.errors(since))


def test_compare_page_plays_in_step_offline(browser, renders, tmp_path):
    since = load(browser, renders / "teacache" / "report.html")
    assert browser.js("document.querySelectorAll('#grid .card').length") == 4
    assert browser.js("document.querySelectorAll('#unpaired li').length") == 2
    img = shot(browser, "report_screenshot.png", tmp_path)
    assert img.shape == (HEIGHT, WIDTH, 3)
    assert (np.abs(img - PAGE_BG).sum(axis=-1) > 30).mean() > 0.1  # not a blank page
    assert coloured(img[rect(browser, "#grid .card .thumb")]) > 50  # the first card shows its clips' objects

    paired = browser.js("vidcacheReport.state.shown.findIndex(v => v.ref && v.ref.mp4 && v.mp4)")
    browser.js(f"vidcacheReport.openDetail(vidcacheReport.state.shown[{paired}].index)")
    meta = browser.js("""new Promise((ok, no) => { const vs = [...document.querySelectorAll('#detail video')];
        const t0 = Date.now(); const check = () => {
          if (vs.some(v => v.error)) no(new Error('decode error ' + vs.map(v => v.error && v.error.message)));
          else if (vs.every(v => v.readyState >= 2)) ok(vs.map(v => [v.videoWidth, v.videoHeight, v.duration]));
          else if (Date.now() - t0 > 10000) no(new Error('videos did not load'));
          else setTimeout(check, 50); }; check(); })""")
    assert [m[:2] for m in meta] == [[96, 96], [96, 96]] and meta[0][2] == pytest.approx(17 / 8, abs=0.2)

    def times_after(action: str) -> list[float]:
        return browser.js(f"""new Promise(ok => {{ const vs = [...document.querySelectorAll('#detail video')];
            let n = 0; const now = () => vs.map(v => v.currentTime);
            const one = () => {{ if (++n === vs.length) ok(now()); }};
            vs.forEach(v => v.addEventListener('seeked', one, {{ once: true }}));
            {action}; setTimeout(() => ok(now()), 3000); }})""")

    seek = "const s = document.getElementById('d-seek'); s.value = 9; s.dispatchEvent(new Event('input'))"
    assert times_after(seek) == pytest.approx([9.5 / 8] * 2, abs=1e-3)
    click = ("const s = document.getElementById('d-strip'), r = s.getBoundingClientRect();"
             "s.dispatchEvent(new MouseEvent('click', {clientX: r.left + r.width * 3.5 / 17, clientY: r.top + 5}))")
    assert times_after(click) == pytest.approx([3.5 / 8] * 2, abs=1e-3)  # the heat strip seeks both

    browser.js("document.getElementById('d-play').click()")
    time.sleep(0.8)
    played = browser.js("""[...document.querySelectorAll('#detail video')].map(v =>
        [v.currentTime, v.paused, v.getVideoPlaybackQuality().totalVideoFrames])""")
    browser.js("document.getElementById('d-play').click()")
    (t_ref, paused_ref, decoded_ref), (t_mine, paused_mine, decoded_mine) = played
    assert not paused_ref and not paused_mine and decoded_ref > 0 and decoded_mine > 0
    assert t_ref > 3.5 / 8 + 0.2 and abs(t_ref - t_mine) <= 1 / 8 + 0.05  # in step within a frame (8 fps)
    detail = shot(browser, "report_detail.png", tmp_path)
    assert coloured(detail[rect(browser, "#detail video")]) > 50
    browser.js("vidcacheReport.closeDetail(true)")
    offline_and_clean(browser, since)

    after = len(browser.events)  # and the page's policy refuses the network outright
    browser.js("document.body.append(Object.assign(new Image(), {src: 'http://127.0.0.1:9/x.png'}))")
    failed = browser.wait_event("Network.loadingFailed", after, timeout=10)
    assert failed["params"].get("blockedReason") == "csp"


def test_folder_tree_filters_and_sorts(browser, renders, tmp_path):
    since = load(browser, renders / "report.html")
    cards = "[...document.querySelectorAll('#grid .card')].map(c => +c.dataset.index)"
    assert len(browser.js(cards)) == 8
    assert browser.js("document.querySelector('#bench img').naturalWidth") > 0  # the bench's pareto.png
    assert browser.js("document.querySelectorAll('#bench tbody tr').length") == 2

    def choose(selector: str, value: str) -> None:
        browser.js(f"(() => {{ const s = document.querySelector('{selector}'); s.value = {json.dumps(value)};"
                   f" s.dispatchEvent(new Event('{'input' if selector == '#f-q' else 'change'}')); }})()")

    choose("#f-cache", "teacache.fast")
    choose("#f-sort", "total_s")
    browser.js("document.getElementById('f-desc').click()")
    shown = browser.js(cards)
    totals = browser.js(f"{cards}.map(i => [vidcacheReport.state.shown.find(v => v.index === i)])"
                        ".map(([v]) => [v.cache, v.total_s])")
    assert len(shown) == 4 and {c for c, _ in totals} == {"teacache.fast"}
    assert [t for _, t in totals] == sorted((t for _, t in totals), reverse=True)
    choose("#f-cache", "")
    choose("#f-q", "yellow")
    assert len(browser.js(cards)) == 1  # the one yellow prompt, rendered uncached only
    offline_and_clean(browser, since)


def test_missing_and_failed_videos_shown(browser, report_runs, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(report_runs["none"], folder)
    gone = next(p for p in sorted(folder.glob("*.mp4")))
    gone.unlink()
    run = json.loads((folder / "run.json").read_text())
    run["videos"].append({"name": "0009-oom-5", "status": "failed", "error": "out of memory on cuda: try fewer frames"})
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "notes.json").write_text("{}")
    r = CliRunner().invoke(app, ["report", str(folder), "--against", str(report_runs["teacache"])])
    assert r.exit_code == 0, r.output
    since = load(browser, folder / "report.html")
    assert browser.js("document.querySelectorAll('#problems li').length") == 2  # the MP4, the foreign JSON
    statuses = browser.js("[...document.querySelectorAll('#grid .card')].map(c => [c.dataset.status, c.textContent])")
    assert sorted(s for s, _ in statuses) == ["done", "done", "done", "failed", "missing"]
    assert "MP4 missing" in next(t for s, t in statuses if s == "missing")
    assert "out of memory" in next(t for s, t in statuses if s == "failed")
    for i in range(len(statuses)):  # every detail view opens without an error
        browser.js(f"vidcacheReport.openDetail({i})")
    browser.js("vidcacheReport.closeDetail(true)")
    offline_and_clean(browser, since)


def test_thousands_of_videos_stay_paged(browser, report_runs, tmp_path):
    folder = tmp_path / "farm"
    folder.mkdir()
    src = next(p for p in sorted(report_runs["none"].glob("*.json")) if p.name != "run.json")
    shutil.copy(src.with_suffix(".mp4"), folder / "clip.mp4")
    base = json.loads(src.read_text())
    n = 2000
    for i in range(n):
        rep = base | {"name": f"{i:05d}-clip", "mp4": "clip.mp4", "worker": f"node-{i % 7}"}
        rep["timing"] = base["timing"] | {"total_s": 1.0 + (i * 37 % n) / n}
        if i % 200 == 7:
            rep |= {"status": "failed", "error": f"out of memory on node-{i % 7}"}
        (folder / f"{i:05d}-clip.json").write_text(json.dumps(rep))
    r = CliRunner().invoke(app, ["report", str(folder)])
    assert r.exit_code == 0, r.output
    page = folder / "report.html"
    assert page.stat().st_size < 2500 * n  # the data of a video, not its pictures
    since = load(browser, page)
    count = "document.querySelectorAll('#grid .card').length"
    assert browser.js(count) == 48 and browser.js("document.getElementById('p-at').textContent") == "page 1 of 42"
    browser.js("document.getElementById('p-next').click()")
    assert browser.js("+document.querySelector('#grid .card').dataset.index") == 48
    browser.js("(() => { const s = document.getElementById('f-status'); s.value = 'failed';"
               " s.dispatchEvent(new Event('change')); })()")
    assert browser.js(count) == 10 and browser.js("document.getElementById('p-at')") is None
    assert "worker" in browser.js("(vidcacheReport.openDetail(vidcacheReport.state.shown[0].index),"
                                  " document.querySelector('#detail .facts').textContent)")
    browser.js("vidcacheReport.closeDetail(true)")
    offline_and_clean(browser, since)

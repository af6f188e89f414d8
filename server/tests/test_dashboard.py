"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against the
real stack: a Hypercorn API process with an API key, a worker and Data Bank.

The main test clicks through what a user does: enter the key, upload a corpus, train a tiny
tokenizer, start a tiny run (both named and tagged), watch the loss chart draw while it
trains, read the evaluation and the artifact pointer, and generate text. Another finds a
sweep of runs by its tag and compares them. Every request the page makes must go to the API
itself (nothing from a CDN). A missing chromium fails these tests; it does not skip them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser import RequestLog, chromium, missing_chromium
from tests.stack import Api, Stack, json_dict, poll
from tests.test_cli import _text

# Starts worker processes (or a browser): `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

API_KEY = "dashboard-test-key"
# Generous: a loaded CI machine trains slowly. Waits end as soon as their condition holds.
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    why = missing_chromium()
    if why:
        pytest.fail(why)
    s = Stack(tmp_path_factory.mktemp("dashboard-stack"), redis_url)
    s.start_worker("worker-a")
    yield s
    s.close()


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(stack, tmp_path_factory.mktemp("dashboard-api"), API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard-corpus") / "made-up.txt"
    path.write_text(_text())
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with chromium(tmp_path / "profile") as context:
        context.set_default_timeout(15_000)
        yield context


def _enter_key(page: Page, key: str) -> None:
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def _chart_points(page: Page, which: str) -> int:
    value = page.get_attribute("#loss-chart", f"data-{which}-points")
    return int(value or 0)


def _tokenizer(client: httpx.Client, stack: Stack) -> tuple[str, str]:
    """A corpus in Data Bank and a tiny tokenizer trained on it (completed): their ids."""
    corpus = stack.upload_text(_text())
    tokenizer = client.post(
        "/tokenizers/train",
        json={"method": "bpe", "vocab_size": 400, "corpus_file_id": corpus},
    ).json()["tokenizer_id"]
    assert isinstance(tokenizer, str), tokenizer
    poll(
        lambda: json_dict(client.get(f"/tokenizers/{tokenizer}").json()),
        lambda t: t["status"] == "completed",
        JOB_TIMEOUT_MS / 1000,
    )
    return corpus, tokenizer


def _ended(client: httpx.Client, run_id: str) -> dict[str, object]:
    """The run once it has ended (fails when it stops making progress first)."""
    return poll(
        lambda: json_dict(client.get(f"/runs/{run_id}").json()),
        lambda r: r["status"] in ("completed", "failed", "cancelled"),
        JOB_TIMEOUT_MS / 1000,
    )


def test_train_a_tokenizer_and_a_run_and_generate(
    api: Api, browser: BrowserContext, corpus_path: Path
) -> None:
    page = browser.new_page()
    requests = RequestLog(page)
    page.goto(api.url + "/")
    assert page.url.startswith(api.url + "/dashboard/")
    _enter_key(page, API_KEY)
    expect(page.locator("#key-form")).to_be_hidden()

    # A corpus uploaded through the page, then a tiny tokenizer trained on it.
    page.click("nav >> text=New tokenizer")
    page.set_input_files("#corpus-file", corpus_path)
    expect(page.locator("#upload-status")).to_contain_text("Uploaded made-up.txt")
    expect(page.locator("#corpus-select")).to_contain_text("made-up.txt")
    # A size no other test trains: the same request twice is one tokenizer, labelled by the
    # first, so this one's labels are this form's.
    page.fill("#field-vocab_size", "420")
    tag = f"form-{uuid.uuid4().hex[:8]}"
    page.fill("#field-name", "Made-up BPE")
    page.fill("#field-tags", f"{tag}, bpe")
    page.click("#tokenizer-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/tokenizers$"))
    # Found by its tag (and by a prefix of its name, in any case).
    page.fill("#tokenizers-filter-tag", tag)
    page.fill("#tokenizers-filter-name", "made-up")
    row = page.locator("#tokenizers-table tr[data-tokenizer]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Made-up BPE")
    expect(row.locator(".tag")).to_have_text([tag, "bpe"])
    expect(row.locator(".chip")).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#corpora-table")).to_contain_text("made-up.txt")

    # A tiny run with a time budget: long enough to be seen training.
    page.click("nav >> text=New run")
    expect(page.locator("#tokenizer-select option").first).to_have_attribute(
        "value", re.compile(r"^tok-")
    )
    for name, value in [
        ("n_layer", "2"),
        ("n_embd", "64"),
        ("budget", "6"),
        ("batch_size", "8"),
        ("max_seq_len", "32"),
    ]:
        page.fill(f"#field-{name}", value)
    page.select_option("#field-budget_kind", "seconds")
    # A family and optimizer other than the defaults: the form sends what was picked.
    page.select_option("#field-model_family", "llama")
    page.select_option("#field-optimizer", "muon")
    page.fill("#field-muon_learning_rate", "0.03")
    page.click("#more-settings summary")
    page.fill("#field-warmup_steps", "5")
    page.fill("#field-eval_interval", "20")
    page.fill("#field-name", "Llama with Muon")
    page.fill("#field-tags", f" {tag} ,muon,")
    page.fill("#field-metadata", "purpose=browser test\n\nowner = dashboard")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/runs/run-[0-9a-f]{16}$"))
    details = page.locator("#run-details")
    expect(details).to_contain_text("llama · tiny")
    expect(details).to_contain_text("muon (0.03)")
    expect(details).to_contain_text("Llama with Muon")
    expect(details.locator(".tag")).to_have_text([tag, "muon"])
    expect(details).to_contain_text("purpose = browser test")
    expect(details).to_contain_text("owner = dashboard")

    # The chart draws while the run trains, and keeps drawing until it ends.
    # (Predicates are functions: the page's Content-Security-Policy forbids eval of strings.)
    page.wait_for_function(
        """() => document.querySelector('#loss-chart').dataset.trainPoints > 0
            && document.querySelector('#run-status').textContent === 'running'""",
        timeout=JOB_TIMEOUT_MS,
    )
    while_training = _chart_points(page, "train")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    # Once it ended, the chart holds the run's whole curve: every point the API has.
    run_id = page.url.rsplit("/", 1)[1]
    answer = httpx.get(
        f"{api.url}/runs/{run_id}/metrics", headers={"X-API-Key": API_KEY}, timeout=30
    )
    points = [json_dict(p) for p in answer.json()["points"]]
    train = sum(p.get("train_loss") is not None for p in points)
    val = sum(p.get("val_loss") is not None for p in points)
    assert val > 0 and train >= while_training, (train, val, while_training)
    page.wait_for_function(
        """([train, val]) => document.querySelector('#loss-chart').dataset.trainPoints == train
            && document.querySelector('#loss-chart').dataset.valPoints == val""",
        arg=[train, val],
        timeout=JOB_TIMEOUT_MS,
    )
    expect(page.locator("#run-progress")).to_contain_text("100%")
    expect(page.locator("#run-logs")).to_contain_text("training finished at step")
    expect(page.locator("#artifact-file-id")).to_have_value(re.compile(r"^[0-9a-f]{64}$"))
    expect(page.locator("#checkpoints-table tbody tr").first).not_to_have_class("empty")
    expect(page.locator("#eval-result")).to_contain_text("Bits per character")
    expect(page.locator("#cancel-run")).to_be_hidden()

    # The generate box answers with text.
    page.fill("#field-prompt", "Ka")
    page.fill("#field-max_new_tokens", "12")
    page.fill("#field-seed", "7")
    page.click("#generate")
    # The API's first generation imports torch and loads the model from Data Bank.
    expect(page.locator("#samples pre.sample")).to_have_count(1, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#samples")).to_contain_text("12 tokens")
    sample = page.locator("#samples pre.sample").inner_text()
    assert sample.startswith("Ka") and len(sample) > len("Ka"), sample

    # Every request went to the API itself.
    assert requests.urls
    assert requests.elsewhere(api.url) == []


def test_a_wrong_key_shows_the_key_form_and_forget_brings_it_back(
    api: Api, browser: BrowserContext
) -> None:
    page = browser.new_page()
    requests = RequestLog(page)
    page.goto(api.url + "/dashboard/#/runs")
    _enter_key(page, "not-the-key")
    expect(page.locator("#key-error")).to_contain_text("refused")
    _enter_key(page, API_KEY)
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#runs-table tbody tr").first).to_be_visible()
    expect(page.locator(".error:visible")).to_have_count(0)
    # The key stays in this browser: a reload asks for nothing.
    page.reload()
    expect(page.locator("#runs-table tbody tr").first).to_be_visible()
    expect(page.locator("#key-form")).to_be_hidden()
    page.click("#forget-key")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#key-error")).to_contain_text("needs an API key")
    assert requests.elsewhere(api.url) == []


def test_pause_resume_and_cancel_from_the_run_page(
    api: Api, stack: Stack, browser: BrowserContext
) -> None:
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        corpus, tokenizer = _tokenizer(client, stack)
        run = client.post(
            "/runs/train",
            json={
                "corpus_file_id": corpus,
                "tokenizer_id": tokenizer,
                "n_layer": 1,
                "n_embd": 32,
                "max_seq_len": 16,
                "batch_size": 4,
                "max_train_seconds": 600,
            },
        ).json()["run_id"]
    page = browser.new_page()
    page.goto(f"{api.url}/dashboard/#/runs/{run}")
    _enter_key(page, API_KEY)
    expect(page.locator("#run-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#resume-run")).to_be_hidden()
    page.click("#pause-run")
    expect(page.locator("#run-status")).to_have_text("paused", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#pause-run")).to_be_hidden()
    page.click("#resume-run")
    expect(page.locator("#run-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    page.click("#cancel-run")
    expect(page.locator("#cancel-run")).to_have_text("Click again to cancel")
    page.click("#cancel-run")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#cancel-run")).to_be_hidden()


def test_find_a_sweep_by_tag_and_compare_its_runs(
    api: Api, stack: Stack, browser: BrowserContext
) -> None:
    """Three tiny runs that differ in learning rate, found in the runs list by their tag,
    picked and compared: one chart of every run's curves (on each axis), their final
    figures, the settings that differ, and a sample of each run's model."""
    tag = f"sweep-{uuid.uuid4().hex[:8]}"
    rates = {"Sweep A": 0.001, "Sweep B": 0.003, "Sweep C": 0.01}
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        corpus, tokenizer = _tokenizer(client, stack)
        names: dict[str, str] = {}
        for name, rate in rates.items():
            answer = client.post(
                "/runs/train",
                json={
                    "corpus_file_id": corpus,
                    "tokenizer_id": tokenizer,
                    "n_layer": 1,
                    "n_embd": 32,
                    "max_seq_len": 16,
                    "batch_size": 4,
                    "max_steps": 30,
                    "eval_interval": 10,
                    "warmup_steps": 2,
                    "learning_rate": rate,
                    "name": name,
                    "tags": [tag, f"lr={rate:g}"],
                    "metadata": {"sweep": tag},
                },
            )
            assert answer.status_code == 202, answer.text
            names[str(json_dict(answer.json())["run_id"])] = name
        runs = list(names)
        for run_id in runs:
            ended = _ended(client, run_id)
            assert ended["status"] == "completed", ended
        compared = json_dict(client.get("/runs/compare", params={"run_id": runs}).json())
    # What the compare chart draws on the step axis: every train and validation loss.
    curves = compared["runs"]
    assert isinstance(curves, list) and len(curves) == 3
    points = 0
    for run in curves:
        curve = json_dict(run)["curve"]
        assert isinstance(curve, list) and curve, run
        for point in curve:
            p = json_dict(point)
            points += (p["train_loss"] is not None) + (p["val_loss"] is not None)

    page = browser.new_page()
    requests = RequestLog(page)
    page.goto(f"{api.url}/dashboard/#/runs")
    _enter_key(page, API_KEY)
    # The tag finds exactly the sweep, each run with its name; a name prefix narrows it.
    page.fill("#runs-filter-tag", tag)
    rows = page.locator("#runs-table tbody tr[data-run]")
    expect(rows).to_have_count(3)
    for run_id, name in names.items():
        row = page.locator(f'#runs-table tr[data-run="{run_id}"]')
        expect(row).to_contain_text(name)
        expect(row.locator(".tag").first).to_have_text(tag)
    page.fill("#runs-filter-name", "sweep c")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("Sweep C")
    page.fill("#runs-filter-name", "")
    expect(rows).to_have_count(3)

    # Picked (one is not enough), then compared.
    expect(page.locator("#compare-runs")).to_be_disabled()
    for run_id in runs:
        page.locator(f'#runs-table tr[data-run="{run_id}"] .compare-pick').check()
    expect(page.locator("#compare-runs")).to_be_enabled()
    page.click("#compare-runs")
    expect(page).to_have_url(re.compile("#/compare/" + ",".join(runs) + "$"))
    chart = page.locator("#compare-chart")
    expect(chart).to_have_attribute("data-series", "3", timeout=JOB_TIMEOUT_MS)
    expect(chart).to_have_attribute("data-points", str(points))
    assert points > 0
    final = page.locator("#compare-final tbody tr")
    expect(final).to_have_count(3)
    for run_id, name in names.items():
        expect(page.locator(f'#compare-final tr[data-run="{run_id}"]')).to_contain_text(name)
    expect(final.locator(".chip")).to_have_text(["completed"] * 3)
    differing = page.locator('#compare-differing tr[data-field="learning_rate"]')
    expect(differing).to_contain_text("learning_rate")
    expect(differing).to_contain_text("0.003")
    # The other axes draw the same runs.
    for axis in ("tokens", "seconds"):
        page.select_option("#compare-axis", axis)
        expect(chart).to_have_attribute("data-series", "3")
        expect(chart).to_have_attribute("aria-label", re.compile(axis))

    # One sample of each run's model for a prompt.
    page.fill("#compare-prompt", "Ka")
    page.click("#compare-sample")
    samples = page.locator("#compare-samples pre.sample")
    # The API loads each run's model from Data Bank for its first generation.
    expect(samples).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    for i in range(3):
        text = samples.nth(i).inner_text()
        assert text.startswith("Ka") and len(text) > len("Ka"), text
    assert requests.elsewhere(api.url) == []


def test_pages_and_assets_are_served_by_the_api(api: Api) -> None:
    """Public (no key), with their content types, revalidated caching and a policy that
    lets the browser load nothing from elsewhere."""
    root = httpx.get(api.url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    types = {
        "/dashboard/": "text/html",
        "/dashboard/app.js": "text/javascript",
        "/dashboard/chart.js": "text/javascript",
        "/dashboard/style.css": "text/css",
        "/dashboard/icon.svg": "image/svg+xml",
    }
    for path, media_type in types.items():
        answer = httpx.get(api.url + path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(media_type), path
        assert answer.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        again = httpx.get(api.url + path, headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304
    page = httpx.get(api.url + "/dashboard/").text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert httpx.get(api.url + "/dashboard/secrets.txt").status_code == 404
    assert httpx.get(api.url + "/runs").status_code == 401  # the data still needs the key

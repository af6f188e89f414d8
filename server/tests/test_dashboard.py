"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against the
real stack: a Hypercorn API process with an API key, a worker and Data Bank.

The main test clicks through what a user does: enter the key, upload a corpus, train a tiny
tokenizer, start a tiny run (both named and tagged), watch the loss chart draw while it
trains, read the evaluation and the artifact pointer, and generate text. Another uploads a
tiny base model and fine-tunes it with LoRA from the new-run form, then reads its figures
before and after and generates from both models. Another finds a sweep of runs by its tag
and compares them; another makes a sweep with the New sweep form,
reads its leaderboard and chart once successive halving stopped its worse trials, and
cancels a second one. Every request the page makes must go to the API itself (nothing from
a CDN). A missing chromium fails these tests; it does not skip them.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.base_models import base_model_folder, tar_folder
from tests.browser import RequestLog, chromium, missing_chromium
from tests.stack import Api, Stack, json_dict, num, poll
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


def _millions(n: int) -> str:
    """Parameters as the page writes them: millions, at most 2 decimals ("0.04 M")."""
    return f"{n / 1e6:,.2f}".rstrip("0").rstrip(".") + " M"


def test_fine_tune_an_uploaded_base_model_and_compare_before_and_after(
    api: Api, browser: BrowserContext, corpus_path: Path, tmp_path: Path
) -> None:
    """A tiny GPT-2 folder tarred and uploaded on the Base models page (a tar without its
    weights is refused with the API's reason), fine-tuned with LoRA from the new-run form
    (no tokenizer and no architecture sent; a context past the model's is refused first),
    watched to its end; the run's page shows the base model's figures beside the fine-tuned
    model's and generates from both."""
    headers = {"X-API-Key": API_KEY}
    folder = base_model_folder(tmp_path / "tiny-gpt2", "gpt2", _text())
    tar = tar_folder(folder, tmp_path / "tiny-gpt2.tar")
    weightless = shutil.copytree(
        folder, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors")
    )
    unusable = tar_folder(weightless, tmp_path / "no-weights.tar")
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        refused = client.post(
            "/models",
            params={"name": unusable.name},
            content=unusable.read_bytes(),
            headers={"content-type": "application/x-tar"},
        )
    assert refused.status_code == 422, refused.text
    reason = str(json_dict(refused.json())["message"])
    assert "no safetensors weights" in reason, reason

    page = browser.new_page()
    requests = RequestLog(page)
    page.goto(f"{api.url}/dashboard/#/models")
    _enter_key(page, API_KEY)
    expect(page.locator("#models-table tbody tr").first).to_be_visible()
    # The unusable tar: the API's reason, nothing uploaded.
    page.set_input_files("#model-file", unusable)
    expect(page.locator("#model-upload-error")).to_have_text(reason)
    expect(page.locator("#model-upload-status")).to_have_text("")
    # The model: what it is, and listed.
    page.set_input_files("#model-file", tar)
    status = page.locator("#model-upload-status")
    expect(status).to_contain_text("Uploaded tiny-gpt2.tar: ")
    expect(page.locator("#model-upload-error")).to_be_hidden()
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        listed = [json_dict(m) for m in client.get("/models").json()["items"]]
    uploaded = next(m for m in listed if m["name"] == "tiny-gpt2.tar")
    file_id = str(uploaded["file_id"])
    model = json_dict(uploaded["model"])
    assert model["architecture"] == "GPT2LMHeadModel" and model["context_length"] == 128
    params = _millions(int(num(model["n_params"])))
    expect(status).to_have_text(
        f"Uploaded tiny-gpt2.tar: GPT2LMHeadModel, {params} parameters, context 128 tokens."
    )
    row = page.locator(f'#models-table tr[data-model="{file_id}"]')
    expect(row).to_contain_text("tiny-gpt2.tar")
    expect(row).to_contain_text("GPT2LMHeadModel")
    expect(row).to_contain_text(params)

    # The new-run form with the base model picked: no tokenizer, no architecture.
    page.click("nav >> text=New run")
    expect(page.locator(f'#base-model-select option[value="{file_id}"]')).to_have_count(1)
    expect(page.locator("#tokenizer-select option").first).to_be_attached()
    expect(page.locator("#fine-tuning")).to_be_hidden()
    page.set_input_files("#corpus-file", corpus_path)
    expect(page.locator("#upload-status")).to_contain_text("Uploaded made-up.txt")
    page.select_option("#base-model-select", file_id)
    for name in ("#tokenizer-select", "#field-model_family", "#field-model_size", "#field-n_layer"):
        expect(page.locator(name)).to_be_hidden()
    expect(page.locator("#fine-tuning")).to_be_visible()
    expect(page.locator("#context-hint")).to_have_text("at most 128, the base model's context")
    # A new model's learning rate and optimizer are not fine-tuning's: left to the server.
    expect(page.locator("#field-learning_rate")).to_have_value("")
    expect(page.locator("#field-optimizer")).to_have_value("adamw")
    expect(page.locator("#field-lora_r")).to_be_disabled()
    page.select_option("#field-method", "lora")
    page.fill("#field-lora_r", "4")
    page.fill("#field-lora_alpha", "8")
    # A chat corpus (loss on every token) past the model's context: the API refuses the
    # context, so it took the rest of the request.
    expect(page.locator("#field-loss_on")).to_be_disabled()
    page.select_option("#field-corpus_format", "chat")
    page.select_option("#field-loss_on", "all")
    for name, value in [
        ("budget", "30"),
        ("learning_rate", "0.01"),
        ("batch_size", "8"),
        ("max_seq_len", "256"),
    ]:
        page.fill(f"#field-{name}", value)
    page.select_option("#field-budget_kind", "steps")
    page.click("#more-settings summary")
    page.fill("#field-warmup_steps", "2")
    page.fill("#field-eval_interval", "10")
    page.fill("#field-checkpoint_interval", "10")
    page.fill("#field-name", "LoRA of tiny GPT-2")
    page.click("#run-form button[type=submit]")
    refused_form = page.locator("#run-form > .error")
    expect(refused_form).to_contain_text("past the base model's context (128 tokens)")
    expect(refused_form).to_contain_text("max_seq_len: 256: at most 128")
    expect(page).to_have_url(re.compile(r"#/new-run$"))
    # Plain text, and a context that fits.
    page.select_option("#field-corpus_format", "auto")
    expect(page.locator("#field-loss_on")).to_be_disabled()
    page.fill("#field-max_seq_len", "32")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/runs/run-[0-9a-f]{16}$"))
    run_id = page.url.rsplit("/", 1)[1]
    details = page.locator("#run-details")
    expect(details).to_contain_text("tiny-gpt2.tar")
    expect(details).to_contain_text("LoRA (rank 4, alpha 8), merged artifact")
    expect(details).to_contain_text("the base model's own")

    # Until it ends (no deadline while it makes progress), then as the page shows it.
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        ended = _ended(client, run_id)
        assert ended["status"] == "completed", ended
        evaluation = json_dict(client.get(f"/runs/{run_id}/eval").json())
    request = json_dict(ended["request"])
    assert request["base_model"] == file_id and request["method"] == "lora", request
    assert json_dict(request["lora"])["r"] == 4 and json_dict(request["lora"])["alpha"] == 8
    assert request["tokenizer_id"] is None and request["corpus_format"] == "auto", request
    # The form left the weight decay to fine-tuning's default; the rest as filled in.
    assert request["optimizer"] == "adamw" and request["weight_decay"] == 0.0, request
    assert request["learning_rate"] == 0.01 and request["max_steps"] == 30, request
    assert request["max_seq_len"] == 32 and request["batch_size"] == 8, request
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-progress")).to_contain_text("100%")

    # The base model's figures before training beside the fine-tuned model's.
    assert evaluation["split"] == "validation", evaluation
    base = json_dict(evaluation["base"])
    before_after = page.locator("#eval-before-after")
    expect(before_after).to_contain_text("Validation loss")
    for metric, digits in (("loss", 3), ("perplexity", 2), ("bits_per_char", 3)):
        cells = before_after.locator(f'tr[data-metric="{metric}"] td')
        expect(cells.nth(1)).to_have_text(f"{num(base[metric]):.{digits}f}")
        expect(cells.nth(2)).to_have_text(f"{num(evaluation[metric]):.{digits}f}")

    # Text from the base model, then from both with the same seed.
    page.fill("#field-prompt", "Ka")
    page.fill("#field-max_new_tokens", "12")
    page.fill("#field-seed", "7")
    page.select_option("#field-checkpoint", "base")
    page.click("#generate")
    # The API loads the base model from Data Bank for its first generation.
    before = page.locator('#samples pre.sample[data-source="base"]')
    expect(before).to_have_count(1, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#samples")).to_contain_text("12 tokens")
    expect(page.locator("#samples")).to_contain_text("base model (before training)")
    alone = before.inner_text()
    assert alone.startswith("Ka") and len(alone) > len("Ka"), alone
    page.select_option("#field-checkpoint", "")
    page.click("#generate-both")
    groups = page.locator("#samples .generated")
    expect(groups).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    expect(groups.nth(0)).to_have_attribute("data-source", "artifact")
    expect(groups.nth(0).locator("h3")).to_have_text("Fine-tuned model")
    expect(groups.nth(1)).to_have_attribute("data-source", "base")
    expect(groups.nth(1).locator("h3")).to_have_text("Base model (before training)")
    for i in range(2):
        expect(groups.nth(i)).to_contain_text("seed 7")
        text = groups.nth(i).locator("pre.sample").inner_text()
        assert text.startswith("Ka") and len(text) > len("Ka"), text
    # The same request to the same base model: the same text as before.
    assert groups.nth(1).locator("pre.sample").inner_text() == alone
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


def _sweep_ended(client: httpx.Client, sweep_id: str) -> dict[str, object]:
    """The sweep once it has ended (fails when its trials stop making progress first: their
    statuses and steps, not the driver's timestamp that every pass renews)."""

    def state() -> dict[str, object]:
        sweep = json_dict(client.get(f"/sweeps/{sweep_id}").json())
        trials = json_dict(sweep["progress"])["trials"]
        assert isinstance(trials, list), sweep
        moving = [(json_dict(t)["status"], json_dict(t)["steps"]) for t in trials]
        return {"status": sweep["status"], "trials": moving}

    return poll(
        state,
        lambda s: s["status"] in ("completed", "failed", "cancelled"),
        JOB_TIMEOUT_MS / 1000,
    )


def test_a_sweep_from_the_form_its_leaderboard_and_cancel(
    api: Api, stack: Stack, browser: BrowserContext
) -> None:
    """A grid sweep over three learning rates made with the New sweep form, one trial at a
    time with successive halving: the good rate runs first, so the two too small to learn
    anything are stopped at the first rung. Its page shows the leaderboard (the stopped
    trials marked, with their rung), every trial's curve, and the sweeps list finds it by
    its tag. A second, long sweep is cancelled from its page."""
    tag = f"swp-{uuid.uuid4().hex[:8]}"
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        corpus, tokenizer = _tokenizer(client, stack)
    page = browser.new_page()
    requests = RequestLog(page)
    page.goto(f"{api.url}/dashboard/#/sweeps")
    _enter_key(page, API_KEY)
    page.click("#new-sweep")
    expect(page).to_have_url(re.compile(r"#/new-sweep$"))

    # The base of every trial, as the new-run form takes it.
    # (Its corpus is picked with it.)
    page.select_option("#tokenizer-select", tokenizer)
    page.select_option("#field-model_family", "gpt2")
    page.select_option("#field-optimizer", "adamw")
    for name, value in [
        ("n_layer", "1"),
        ("n_embd", "32"),
        ("max_seq_len", "32"),
        ("batch_size", "8"),
        ("budget", "5000"),
    ]:
        page.fill(f"#field-{name}", value)
    page.select_option("#field-budget_kind", "steps")
    page.click("#more-settings summary")
    page.fill("#field-eval_interval", "30")

    # The search space: learning rates (one good, two too small to learn), and head counts
    # of which one does not divide the width: the API refuses the sweep, naming the trial.
    rows = page.locator("#sweep-space tbody tr")
    expect(rows).to_have_count(1)
    rows.first.locator(".sweep-param-name").select_option("learning_rate")
    rows.first.locator(".sweep-param-values").fill("1e-2, 1e-7, 1e-7")
    expect(page.locator("#sweep-count")).to_have_text("3 trials")
    page.click("#sweep-param-add")
    expect(rows).to_have_count(2)
    rows.nth(1).locator(".sweep-param-name").select_option("n_head")
    rows.nth(1).locator(".sweep-param-values").fill("4, 5")
    expect(page.locator("#sweep-count")).to_have_text("6 trials (3 \N{MULTIPLICATION SIGN} 2)")
    page.select_option("#field-method", "grid")
    # As listed: the good rate first, so that the two small ones are judged against it.
    page.select_option("#field-order", "given")
    page.fill("#field-max_concurrent", "1")
    page.check("#field-early_stopping")
    page.fill("#field-grace", "60")
    page.fill("#field-reduction_factor", "2")
    page.fill("#field-name", "Rates")
    page.fill("#field-tags", tag)
    page.click("#sweep-submit")
    refused = page.locator("#sweep-form > .error")
    expect(refused).to_contain_text("trial 1 (learning_rate=0.01, n_head=5) is not a valid run")
    expect(refused).to_contain_text("n_embd (32) must be divisible by n_head (5)")
    expect(page).to_have_url(re.compile(r"#/new-sweep$"))
    rows.nth(1).locator(".sweep-param-remove").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#sweep-count")).to_have_text("3 trials")
    page.click("#sweep-submit")
    expect(page).to_have_url(re.compile(r"#/sweeps/swp-[0-9a-f]{16}$"))
    sweep_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#sweep-title")).to_have_text("Rates")
    expect(page.locator("#sweep-facts")).to_contain_text("5,000 steps a trial")
    expect(page.locator("#sweep-facts")).to_contain_text("60 steps, 120 steps")

    # It runs while the page watches; then the page shows how it ended.
    expect(page.locator("#sweep-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        ended = _sweep_ended(client, sweep_id)
    assert ended["status"] == "completed", ended
    expect(page.locator("#sweep-status")).to_have_text("completed", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#cancel-sweep")).to_be_hidden()
    board = page.locator("#sweep-leaderboard tbody tr")
    expect(board).to_have_count(3)
    best = board.first
    expect(best).to_have_attribute("data-trial", "0")
    expect(best).to_contain_text("learning_rate=0.01")
    expect(best.locator(".chip").first).to_have_text("completed")
    expect(best).not_to_have_class("stopped")
    for i in (1, 2):
        row = board.nth(i)
        expect(row).to_contain_text("learning_rate=1e-7")
        expect(row).to_have_class("stopped")
        stopped = row.locator(".chip-stopped")
        expect(stopped).to_have_text("stopped at rung 0")
        # Its validation loss at the rung against the cutoff it had to beat.
        expect(stopped).to_have_attribute(
            "title", re.compile(r"^validation loss [0-9.]+ at 60 steps > cutoff [0-9.]+$")
        )
    runs = [board.nth(i).get_attribute("data-run") or "" for i in range(3)]
    order = sorted(range(3), key=lambda i: int(board.nth(i).get_attribute("data-trial") or 0))
    # Every trial's curves, the stopped ones faded; the same runs on the compare page.
    chart = page.locator("#sweep-chart")
    expect(chart).to_have_attribute("data-series", "3")
    expect(chart).to_have_attribute("data-faded", "2")
    assert int(chart.get_attribute("data-points") or 0) > 0
    expect(chart).to_have_attribute("aria-label", re.compile(r"Loss of #0, #1, #2 against step"))
    page.select_option("#sweep-axis", "seconds")
    expect(chart).to_have_attribute("aria-label", re.compile("seconds"))
    expect(chart).to_have_attribute("data-series", "3")
    expect(page.locator("#sweep-compare")).to_have_attribute(
        "href", "#/compare/" + ",".join(runs[i] for i in order)
    )

    # The list finds it by its tag, with its best run.
    page.click("nav >> text=Sweeps")
    page.fill("#sweeps-filter-tag", tag)
    listed = page.locator("#sweeps-table tbody tr[data-sweep]")
    expect(listed).to_have_count(1)
    expect(listed).to_have_attribute("data-sweep", sweep_id)
    expect(listed).to_contain_text("Rates")
    expect(listed.locator(".chip")).to_have_text("completed")
    expect(listed).to_contain_text("3 / 3")
    expect(listed.locator(".best-run a")).to_have_text(runs[0])

    # A long sweep, cancelled from its page: click twice.
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
        answer = client.post(
            "/sweeps",
            json={
                "name": "Too long",
                "base": {
                    "corpus_file_id": corpus,
                    "tokenizer_id": tokenizer,
                    "model_family": "gpt2",
                    "optimizer": "adamw",
                    "n_layer": 1,
                    "n_embd": 32,
                    "max_seq_len": 32,
                    "batch_size": 8,
                    "max_steps": 100_000,
                    # The worker would compile a run this long; cancelled, it never pays off.
                    "compile": "off",
                },
                "space": {"parameters": {"learning_rate": {"values": [1e-3, 3e-3]}}},
                "max_concurrent": 1,
            },
        )
        assert answer.status_code == 202, answer.text
        long_id = str(json_dict(answer.json())["sweep_id"])
    page.goto(f"{api.url}/dashboard/#/sweeps/{long_id}")
    expect(page.locator("#sweep-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    page.click("#cancel-sweep")
    expect(page.locator("#cancel-sweep")).to_have_text("Click again to cancel")
    page.click("#cancel-sweep")
    expect(page.locator("#sweep-status")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#cancel-sweep")).to_be_hidden()
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

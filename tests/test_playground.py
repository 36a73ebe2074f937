"""The web playground in a real browser: Debian's Chromium driven by Playwright against a real server on a tiny
model. Each panel is used as a user would (type, move a slider with the keyboard, run, read both texts; solve an
analogy and load its weights; open a vector; train on pairs and watch the bar reach the end); no test may leave a
JavaScript error or a console error behind.

Chromium comes from apt (``.ci/run`` installs it when missing); Playwright's own browser download is not used.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright
from safetensors.torch import save_file
from transformers import AutoTokenizer

from app.api.routes.playground import ASSETS
from tests.conftest import LiveServer, start_server, stop_server
from tests.faults import Faults
from tests.test_extraction_api import new_name, user_pairs, wait_job
from tests.tiny_models import ARCH_CONFIGS, CHAT_TEMPLATE

CONFIG = ARCH_CONFIGS["llama"]
D_MODEL = int(CONFIG["hidden_size"])
N_LAYERS = int(CONFIG["num_hidden_layers"])
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUICK_EXTRACT = {"n_prompts": 8, "n_trials": 3, "n_heads": 3}
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, not a place the page loads from
LOAD_ERROR = "Failed to load resource"  # Chromium's console line for an HTTP error answer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """A server with two fine-tuned vectors (the analogy bank) and one extracted (layer sweep and AIE stored); its
    tokenizer gets a chat template, for the Steer panel's chat mode."""
    tmp = tmp_path_factory.mktemp("playground")
    model_dir = tmp / tiny_llama_dir.name
    shutil.copytree(tiny_llama_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    server = start_server(tmp, str(model_dir), module="tests.fault_server",
                          admin_token=secrets.token_hex(16), d_model=D_MODEL, n_layers=N_LAYERS,
                          extra_env={"FVSTEER_MAX_NEW_TOKENS": "64", "FVSTEER_MAX_PROMPT_TOKENS": "512"})
    jobs = []
    for name, path, options in (
        ("pg-first", "finetune", {"epochs": 3, "init": "zero", "layer": 1}),
        ("pg-second", "finetune", {"epochs": 3, "init": "zero", "layer": 1, "seed": 1}),
        ("pg-extracted", "extract", {**QUICK_EXTRACT, "layer": 1}),
    ):
        response = httpx.post(f"{server.url}/vectors/{path}", json={"name": name, "pairs": user_pairs(16), **options},
                              timeout=30)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    for job_id in jobs:
        assert wait_job(server, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)["state"] == "succeeded"
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM, "Chromium is missing: apt-get install chromium (.ci/run does it)"
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


class Console:
    """Every console message and uncaught page error, to assert none was an error."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def assert_clean(self, http_errors: int = 0) -> None:
        """No error, except ``http_errors`` lines for API answers the test provoked on purpose."""
        loads = [line for line in self.errors if LOAD_ERROR in line]
        others = [line for line in self.errors if LOAD_ERROR not in line]
        assert others == [] and len(loads) == http_errors, self.errors


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    console = Console(page)
    page.goto(f"{server.url}/playground")
    vectors = httpx.get(f"{server.url}/vectors").json()["vectors"]
    expect(page.locator("#sliders li")).to_have_count(len(vectors), timeout=30_000)  # the vectors loaded
    yield page, console
    context.close()


def run_python(code: str) -> str:
    """What a copied snippet prints, run as a user would run it."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def slider_value(page: Page, name: str) -> float:
    return float(page.locator(f'#sliders input[data-name="{name}"]').input_value())


def test_steer_streams_steered_and_baseline_and_shows_the_request(page: tuple[Page, Console]) -> None:
    page_, console = page
    page_.fill("#prompt", "Q: w1\nA:")
    slider = page_.locator('#sliders input[data-name="pg-extracted"]')
    slider.focus()
    for _ in range(20):  # the keyboard moves a range input by its step, 0.05
        page_.keyboard.press("ArrowRight")
    assert slider_value(page_, "pg-extracted") == pytest.approx(1.0)
    expect(page_.locator("#weighted-count")).to_have_text("1")
    page_.fill("#scale", "4")
    page_.fill("#max-new-tokens", "6")
    page_.uncheck("#stop-newline")
    page_.click("#run")
    expect(page_.locator("#steer-state")).to_have_text("done", timeout=60_000)
    steered = page_.locator("#steered-text").inner_text()
    baseline = page_.locator("#baseline-text").inner_text()
    assert steered and baseline
    assert steered != baseline  # the tiny model's weights are wide: the extracted vector ×4 changes the text
    meta = page_.locator("#steered-meta").inner_text()
    assert "layer 1: pg-extracted@" in meta and "‖v‖" in meta  # the receipt: name@digest per layer

    snippet = page_.locator("#snippet")
    curl = snippet.inner_text()
    assert "/complete" in curl and '"pg-extracted":1' in curl and '"scale":4' in curl
    assert '"return_baseline":true' in curl
    page_.click('#snippet-tabs [data-lang="sdk"]')
    sdk_snippet = snippet.inner_text()
    assert 'relations={"pg-extracted": 1}' in sdk_snippet and "scale=4" in sdk_snippet
    assert run_python(sdk_snippet) == f"{steered}\n{baseline}\n"  # the snippet runs and gives what the page showed
    page_.keyboard.press("ArrowRight")  # keyboard moves between snippet tabs
    expect(page_.locator('#snippet-tabs [data-lang="openai"]')).to_have_attribute("aria-selected", "true")
    openai_snippet = snippet.inner_text()
    assert "client.completions.create" in openai_snippet
    assert '"steering": {"relations": {"pg-extracted": 1}, "scale": 4}' in openai_snippet
    assert run_python(openai_snippet) == f"{steered}\n"
    page_.click("#copy-snippet")
    expect(page_.locator("#copy-state")).to_have_text("copied")
    assert page_.evaluate("navigator.clipboard.readText()") == openai_snippet

    # The snippet is the request the page sent: running it gives the same steered text.
    curl_body = json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0])
    answer = httpx.post(f"{page_.url.rsplit('/playground', 1)[0]}/complete", json=curl_body, timeout=60).json()
    assert answer["text"] == steered and answer["baseline"]["text"] == baseline
    console.assert_clean()


def test_steer_chat_mode_and_filter(page: tuple[Page, Console], server: LiveServer) -> None:
    page_, console = page
    page_.fill("#vector-filter", "second")
    expect(page_.locator("#sliders li:visible")).to_have_count(1)
    item = page_.locator('#sliders li[data-name="pg-second"]')
    assert "layer 1" in (item.get_attribute("title") or "") and "finetuned" in (item.get_attribute("title") or "")
    page_.fill("#vector-filter", "")
    page_.check('input[name="mode"][value="chat"]')
    expect(page_.locator("#system")).to_be_visible()
    page_.fill("#prompt", "w2")
    page_.fill("#max-new-tokens", "4")
    page_.locator('#sliders input[data-name="pg-second"]').fill("-1.5")
    page_.click("#run")
    expect(page_.locator("#steer-state")).to_have_text("done", timeout=60_000)
    assert "messages" in page_.locator("#snippet").inner_text()
    meta = page_.locator("#steered-meta").inner_text()
    assert "4 tokens" in meta or "stop" in meta
    console.assert_clean()


def test_messages_complete_as_the_chat_endpoint_does(server: LiveServer) -> None:
    """``/complete`` with ``messages`` renders the chat template as ``/v1/chat/completions`` does: same text."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "w3"}]
    steering = {"relations": {"pg-extracted": 1.0}, "scale": 2.0}
    ours = httpx.post(f"{server.url}/complete", timeout=60, json={
        "messages": messages, **steering, "max_new_tokens": 6, "return_baseline": True}).json()
    model = httpx.get(f"{server.url}/readyz").json()["model"]
    theirs = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": messages, "max_tokens": 6, "temperature": 0, "steering": steering}).json()
    plain = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": messages, "max_tokens": 6, "temperature": 0}).json()
    assert ours["text"] == theirs["choices"][0]["message"]["content"]
    assert ours["baseline"]["text"] == plain["choices"][0]["message"]["content"]
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]


def test_api_errors_show_their_message_and_param(page: tuple[Page, Console]) -> None:
    page_, console = page
    page_.fill("#max-new-tokens", "100000")
    page_.click("#run")
    error = page_.locator("#steer-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("the limit is 64")
    expect(error.locator("code")).to_have_text("max_new_tokens")
    page_.click("#tab-train")
    page_.fill("#train-name", "bad name!")
    page_.fill("#train-pairs", json.dumps(user_pairs(16)))
    page_.click("#train-start")
    expect(page_.locator("#train-error code")).to_have_text("name")
    console.assert_clean(http_errors=2)


def test_analogy_shows_answer_scores_weights_and_loads_them(page: tuple[Page, Console], server: LiveServer) -> None:
    page_, console = page
    page_.click("#tab-analogies")
    page_.fill("#analogy-a", "w1")
    page_.fill("#analogy-b", "v1")
    page_.fill("#analogy-c", "w2")
    page_.fill("#analogy-choices", "v2, w3, v9")
    page_.keyboard.press("Enter")  # submits the form from the choices box
    expect(page_.locator("#analogy-result")).to_be_visible(timeout=60_000)
    answer = page_.locator("#analogy-answer").inner_text()
    assert answer in {"v2", "w3", "v9"}
    expect(page_.locator("#choice-bars li")).to_have_count(3)
    expect(page_.locator("#choice-bars li.best")).to_have_attribute("data-label", answer)
    bank = {vector["name"] for vector in httpx.get(f"{server.url}/vectors").json()["vectors"]
            if vector["method"] == "finetuned"}  # no combiner fitted: the bank is every fine-tuned vector
    expect(page_.locator("#weight-bars li")).to_have_count(len(bank))
    weights = {item.get_attribute("data-label"): float(item.locator(".value").inner_text())
               for item in page_.locator("#weight-bars li").all()}
    assert set(weights) == bank and {"pg-first", "pg-second"} <= bank
    page_.click("#load-weights")
    expect(page_.locator("#panel-steer")).to_be_visible()
    expect(page_.locator("#tab-steer")).to_be_focused()
    for name, weight in weights.items():
        assert slider_value(page_, name) == pytest.approx(max(-2, min(2, round(weight * 20) / 20)), abs=1e-9)
    assert page_.locator("#prompt").input_value() == "Q: w2\nA:"
    console.assert_clean()


def test_vectors_table_lens_plots_and_admin_actions(page: tuple[Page, Console], server: LiveServer,
                                                    tmp_path: Path) -> None:
    page_, console = page
    page_.click("#tab-vectors")
    rows = page_.locator("#vector-table tbody tr")
    count = len(httpx.get(f"{server.url}/vectors").json()["vectors"])
    expect(rows).to_have_count(count)
    row = page_.locator('#vector-table tr[data-name="pg-first"]')
    assert "finetuned" in row.inner_text() and "hold-out top-1" in row.inner_text()
    page_.click('#vector-table button[data-name="pg-extracted"]')
    expect(page_.locator("#lens-tokens li")).to_have_count(10, timeout=30_000)
    plots = page_.locator("#detail-plots")
    expect(plots.locator('svg[aria-label="layer sweep"]')).to_have_count(1)
    heads = N_LAYERS * int(CONFIG["num_attention_heads"])
    expect(plots.locator('svg[aria-label="AIE heatmap"] rect')).to_have_count(heads)
    page_.click('#vector-table button[data-name="pg-first"]')
    expect(plots.locator("svg path")).to_have_count(2)  # loss and hold-out curves

    # Admin: a wrong token is refused with the server's message; the right one unlocks upload and delete.
    page_.click("#admin summary")
    page_.fill("#admin-token", "wrong")
    page_.click("#admin-form button[type=submit]")
    expect(page_.locator("#admin-error")).to_be_visible()
    page_.fill("#admin-token", server.admin_token)
    page_.click("#admin-form button[type=submit]")
    expect(page_.locator("#upload-form")).to_be_visible()
    assert page_.locator("#admin-token").input_value() == ""
    stored = page_.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    file = tmp_path / "uploaded.safetensors"
    save_file({"vector": torch.randn(D_MODEL)}, str(file))
    page_.set_input_files("#upload-file", str(file))
    name = new_name("up")
    page_.fill("#upload-name", name)
    page_.fill("#upload-layer", "2")
    page_.click("#upload-form button[type=submit]")
    expect(rows).to_have_count(count + 1)
    expect(page_.locator(f'#sliders li[data-name="{name}"]')).to_have_count(1)  # usable in Steer at once
    page_.once("dialog", lambda dialog: dialog.accept())
    page_.click(f'#vector-table tr[data-name="{name}"] button[aria-label="Delete {name}"]')
    expect(rows).to_have_count(count)
    assert httpx.get(f"{server.url}/vectors/{name}").status_code == 404
    console.assert_clean(http_errors=1)


def test_train_progress_reaches_the_end_and_the_vector_appears(page: tuple[Page, Console], server: LiveServer,
                                                               tmp_path: Path) -> None:
    page_, console = page
    page_.click("#tab-train")
    csv = tmp_path / "pairs.csv"
    csv.write_text("input,output\n" + "\n".join(f"{p['input']},{p['output']}" for p in user_pairs(20)) + "\n")
    page_.set_input_files("#train-file", str(csv))
    expect(page_.locator("#pairs-count")).to_have_text("20 pairs")
    name = new_name("trained")
    page_.fill("#train-name", name)
    page_.fill("#train-epochs", "40")
    page_.select_option("#train-init", "zero")
    page_.click("#train-start")
    expect(page_.locator("#train-cancel")).to_be_enabled()
    expect(page_.locator("#train-result")).to_be_visible(timeout=120_000)
    assert page_.locator("#train-progress").evaluate("bar => bar.value") == 1
    assert page_.locator("#train-state").inner_text().split(":", 1)[1].strip().startswith("succeeded")
    expect(page_.locator("#train-curve svg path")).to_have_count(2)
    job = httpx.get(f"{server.url}/vectors/{name}").json()
    assert len(job["metrics"]["history"]) == 40
    page_.click("#train-use")
    expect(page_.locator("#panel-steer")).to_be_visible()
    assert slider_value(page_, name) == 1.0
    console.assert_clean()


def test_train_a_contrast_vector(page: tuple[Page, Console], server: LiveServer) -> None:
    page_, console = page
    page_.click("#tab-train")
    page_.check('input[name="method"][value="contrast"]')
    expect(page_.locator("#contrast-options")).to_be_visible()
    expect(page_.locator("#finetune-options")).to_be_hidden()
    pairs = [{"positive": f"{word} yes", "negative": f"{word} no"} for word in ("a", "b", "c", "d")]
    page_.fill("#train-pairs", json.dumps(pairs))
    expect(page_.locator("#pairs-count")).to_have_text("4 pairs")
    name = new_name("contrast")
    page_.fill("#train-name", name)
    page_.fill("#contrast-layer", "1")
    page_.select_option("#contrast-normalize", "unit")
    page_.fill("#contrast-template", "Say {}:")
    page_.click("#train-start")
    expect(page_.locator("#train-result")).to_be_visible(timeout=120_000)
    expect(page_.locator("#train-summary")).to_contain_text("pairs differ its way")
    stored = httpx.get(f"{server.url}/vectors/{name}").json()
    assert (stored["method"], stored["layer"], round(stored["norm"], 5)) == ("contrast", 1, 1.0)
    console.assert_clean()


def test_train_cancel_ends_the_job(page: tuple[Page, Console], server: LiveServer) -> None:
    page_, console = page
    page_.click("#tab-train")
    page_.fill("#train-pairs", json.dumps([[p["input"], p["output"]] for p in user_pairs(20)]))
    name = new_name("cancelled")
    page_.fill("#train-name", name)
    page_.select_option("#train-init", "zero")
    faults = Faults(server)
    with faults.held("tasks"):  # the job's first forward waits at the gate: it is surely running when cancelled
        page_.click("#train-start")
        cancel = page_.locator("#train-cancel")
        expect(cancel).to_be_enabled()
        faults.wait_parked("tasks")
        cancel.click()
        expect(page_.locator("#train-state")).to_contain_text("running", timeout=60_000)
    expect(page_.locator("#train-state")).to_contain_text("cancelled", timeout=60_000)
    assert httpx.get(f"{server.url}/vectors/{name}").status_code == 404  # nothing saved
    expect(page_.locator("#train-start")).to_be_enabled()
    console.assert_clean()


def test_tabs_work_from_the_keyboard(page: tuple[Page, Console]) -> None:
    page_, console = page
    page_.focus("#tab-steer")
    page_.keyboard.press("ArrowRight")
    expect(page_.locator("#panel-analogies")).to_be_visible()
    expect(page_.locator("#tab-analogies")).to_be_focused()
    page_.keyboard.press("End")
    expect(page_.locator("#panel-train")).to_be_visible()
    page_.keyboard.press("ArrowRight")  # wraps around
    expect(page_.locator("#panel-steer")).to_be_visible()
    console.assert_clean()


def test_narrow_window_stacks_the_columns(browser: Browser, server: LiveServer) -> None:
    context = browser.new_context(viewport={"width": 380, "height": 800})
    page = context.new_page()
    console = Console(page)
    page.goto(f"{server.url}/playground")
    expect(page.locator("#sliders li")).not_to_have_count(0, timeout=30_000)
    steered = page.locator("#steered-text").bounding_box()
    baseline = page.locator("#baseline-text").bounding_box()
    assert steered and baseline and baseline["y"] > steered["y"] + steered["height"]  # one above the other
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    console.assert_clean()
    context.close()


def test_page_is_served_with_a_same_origin_policy(server: LiveServer) -> None:
    page = httpx.get(f"{server.url}/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    static = Path(__file__).resolve().parent.parent / "app" / "playground" / "static"
    shipped = {path.name for path in static.iterdir()}
    assert shipped == {"index.html", *ASSETS}  # every file is served, and nothing else
    for asset in ASSETS:
        kind = "text/css" if asset.endswith(".css") else "text/javascript"
        answer = httpx.get(f"{server.url}/playground/{asset}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        assert set(re.findall(r"https?://[^\s\"']+", answer.text)) <= {SVG_NAMESPACE}  # nothing fetched elsewhere
    missing = httpx.get(f"{server.url}/playground/settings.py")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "asset"
    assert httpx.get(f"{server.url}/playground/..%2F__init__.py").status_code == 404
    cross = httpx.get(f"{server.url}/vectors", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in cross.headers  # no CORS unless FVSTEER_CORS_ORIGINS says so


def test_playground_can_be_turned_off(tmp_path: Path, tiny_llama_dir: Path) -> None:
    off = start_server(tmp_path, str(tiny_llama_dir), admin_token=None, d_model=D_MODEL, n_layers=N_LAYERS,
                       extra_env={"FVSTEER_PLAYGROUND": "false"})
    try:
        assert httpx.get(f"{off.url}/playground").status_code == 404
    finally:
        stop_server(off)

"""The notebooks as a learner sees them: JupyterLab in headless Chromium, offline.

- every notebook in notebooks/ opens unmodified, every committed output renders (no
  "Error displaying", no widget shown as its Python repr, no broken image), the
  browser logs no error; a full-page screenshot of each goes to test-artifacts/;
- the token explorer (found by its CSS class, in a notebook this test writes and
  commits as scripts/run_notebooks.py does) works with no kernel: opening entries and
  the masked/unmasked views with the mouse and the keyboard shows the tokens and
  counts that `instruction_collate_fn` computes; after Run All there is still exactly
  one explorer, and it works the same; after save and reopen, too;
- lesson notebooks that call `token_explorer` show one explorer per call after Run All;
- the chat box: type a question, press send, and the answer `chat_reply` gives appears.

Run with `make test-browser`. Needs /usr/bin/chromium (apt-get install chromium) and
the playwright package (never `playwright install`); skipped without them. Only
127.0.0.1 is reachable from the browser.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"browser test: {CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("browser test: the playwright package is missing (pip install playwright)",
                allow_module_level=True)

import torch  # noqa: E402

from ftlib.classroom.chat import chat_reply  # noqa: E402
from ftlib.data.collate import IGNORE_INDEX, instruction_collate_fn  # noqa: E402
from ftlib.model.gpt import GPTModel, get_config  # noqa: E402
from ftlib.data.tokenizer import get_gpt2_tokenizer  # noqa: E402
from ftlib.classroom.view import token_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
OWN = ARTIFACTS / "notebooks"  # notebooks this test writes, inside the served root
# FTLIB_BROWSER_NOTEBOOKS: another folder of notebooks to check (e.g. freshly re-run copies)
LESSONS = Path(os.environ.get("FTLIB_BROWSER_NOTEBOOKS", ROOT / "notebooks")).resolve()
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb")) + sorted(LESSONS.glob("zh/*.ipynb"))  # and the Chinese edition
sys.path.insert(0, str(ROOT / "scripts"))
from run_notebooks import KERNELSPEC, run_notebook  # noqa: E402

EXPLORER_SOURCE = """\
from ftlib.data.instructions import BUNDLED_DATA_PATH, InstructionDataset, load_instruction_data
from ftlib.data.tokenizer import get_gpt2_tokenizer
from ftlib.classroom.view import token_explorer

tokenizer = get_gpt2_tokenizer()
items = InstructionDataset(load_instruction_data(BUNDLED_DATA_PATH)[:4], tokenizer).with_prompt_lengths()
token_explorer(items, tokenizer)"""
CHAT_SOURCE = """\
import torch
from ftlib.classroom.chat import chat_box
from ftlib.model.gpt import GPTModel, get_config
from ftlib.data.tokenizer import get_gpt2_tokenizer

torch.manual_seed(0)
model, base = GPTModel(get_config("tiny")), GPTModel(get_config("tiny"))
chat_box(model, get_gpt2_tokenizer(), base_model=base, max_new_tokens=8)"""


def _notebook(path, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nbformat.write(nb, path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url, proc, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "jupyter lab exited; see test-artifacts/jupyter.log"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("jupyter lab did not start in time; see test-artifacts/jupyter.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token and its own settings; ftlib from this checkout."""
    home = tmp_path_factory.mktemp("jupyter")
    settings = home / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # render every cell, not only those on screen, so every output can be read
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    # no "get notified about news?" prompt: the environment's settings say so (make setup
    # installs jupyter/overrides.json); test_no_news_prompt checks that they do
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the kernels run_notebook starts, too
    shutil.rmtree(OWN, ignore_errors=True)
    OWN.mkdir(parents=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    _notebook(OWN / "explorer.ipynb", EXPLORER_SOURCE)
    run_notebook(OWN / "explorer.ipynb")  # committed as the lesson notebooks are
    _notebook(OWN / "chat.ipynb", CHAT_SOURCE)
    port, token = _free_port(), secrets.token_hex(16)
    log = open(ARTIFACTS / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--no-browser", "--allow-root",
         f"--ServerApp.root_dir={ROOT}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield f"http://127.0.0.1:{port}", token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # nothing but the local server: a test never reaches out
    context.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith("http://127.0.0.1") else route.abort())
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.server = server
    yield pg
    context.close()


def open_notebook(page, path):
    """Open `path` in a fresh workspace and wait until its kernel is idle."""
    base, token = page.server
    rel = path.resolve().relative_to(ROOT).as_posix()
    page.goto(f"{base}/lab/tree/{rel}?reset&token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.wait_for_timeout(1000)  # let metadata updates from the kernel land


def is_dirty(page):
    return page.locator(".lm-TabBar-tab.jp-mod-dirty").count() > 0


def run_all(page):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_timeout(500)
    page.wait_for_function("""() => [...document.querySelectorAll('.jp-InputArea-prompt')]
        .every(p => !p.textContent.includes('*'))""", timeout=300_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)


def screenshot(page, name):
    """The whole notebook: the viewport is stretched to the notebook's height first."""
    height = page.evaluate("""() => { const n = document.querySelector('.jp-WindowedPanel-outer');
        return n ? n.scrollHeight + 200 : 900; }""")
    page.set_viewport_size({"width": 1280, "height": max(900, min(height, 30_000))})
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def check_outputs_render(page, path):
    outputs = page.locator(".jp-OutputArea-output")
    n_expected = sum(bool(c.get("outputs")) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
    assert outputs.count() >= n_expected, f"{path.name}: {outputs.count()} outputs shown, {n_expected} cells have one"
    text = page.locator(".jp-Notebook").inner_text()
    for bad in ("Error displaying", "VBox(children", "HBox(children", "Loading widget..."):
        assert bad not in text, f"{path.name}: an output shows {bad!r}"
    broken = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea img')]
        .filter(i => !(i.complete && i.naturalWidth > 0)).length""")
    assert broken == 0, f"{path.name}: {broken} images did not load"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_opens_unmodified_and_every_output_renders(page, path):
    open_notebook(page, path)
    screenshot(page, f"zh-{path.stem}" if path.parent.name == "zh" else path.stem)
    assert not is_dirty(page), f"{path.name} opens already modified (its metadata differs from JupyterLab's)"
    check_outputs_render(page, path)
    assert page.errors == [], f"{path.name}: browser console errors: {page.errors}"
    if '"ftlib-explorer' in path.read_text():
        check_explorer(page)


# ---- the token explorer: what it shows must be what instruction_collate_fn computes ----

def expected_columns(item, mask):
    tokenizer = get_gpt2_tokenizer()
    inputs, targets = instruction_collate_fn([item] if mask else [list(item[0])])
    row_in, row_tg = inputs[0].tolist(), targets[0].tolist()
    hidden = row_in[1:] + [50256]  # the token a -100 target hides
    shown = [(str(i), token_text(tokenizer, x), token_text(tokenizer, h if t == IGNORE_INDEX else t),
              t == IGNORE_INDEX) for i, (x, t, h) in enumerate(zip(row_in, row_tg, hidden))]
    return shown, sum(t != IGNORE_INDEX for t in row_tg)


def shown_columns(view):
    """(label, input, target, ignored) of each column of a view, as the browser shows them;
    checks that the row wraps inside the page and each input is exactly above its target."""
    assert view.locator(".ftlib-pos").first.is_visible()
    assert view.locator(".ftlib-row").evaluate("r => r.scrollWidth <= r.clientWidth + 1"), "the row overflows"
    misaligned = view.locator(".ftlib-pos").evaluate_all("""cols => cols.filter(c => {
        const [i, t] = [...c.querySelectorAll(':scope > div')].slice(1).map(d => d.getBoundingClientRect());
        return Math.abs(i.left - t.left) > 0.5 || Math.abs(i.width - t.width) > 0.5 || t.top < i.bottom - 0.5; }).length""")
    assert misaligned == 0, f"{misaligned} columns with the input not exactly above its target"
    return [tuple(c[:3]) + (c[3],) for c in view.locator(".ftlib-pos").evaluate_all(
        """cols => cols.map(c => { const d = c.querySelectorAll(':scope > div');
            return [d[0].innerText, d[1].innerText, d[2].innerText, d[2].classList.contains('ftlib-ignored')]; })""")]


def entry_item(entry):
    """The (token_ids, prompt_length) an entry shows: ids from its columns' titles, the
    prompt length from its summary, so the check needs no knowledge of the notebook."""
    summary = entry.locator("summary").first.inner_text()
    prompt_length = int(re.search(r"\((\d+) prompt", summary).group(1))
    titles = entry.locator("details.ftlib-unmasked .ftlib-pos").evaluate_all("cs => cs.map(c => c.title)")
    return [int(re.match(r"\d+: id (\d+)", t).group(1)) for t in titles], prompt_length


def check_view(entry, kind):
    view = entry.locator(f"details.{kind}")
    expected, count = expected_columns(entry_item(entry), kind == "ftlib-masked")
    assert shown_columns(view) == expected
    assert int(view.locator(".ftlib-count").inner_text()) == count


def check_explorer(page):
    """Open and close entries and views with the mouse and the keyboard; each shown view
    equals instruction_collate_fn's inputs, targets and count for its entry."""
    entries = page.locator(".ftlib-explorer").first.locator("details.ftlib-entry")
    assert entries.count() >= 2
    check_view(entries.nth(0), "ftlib-masked")  # open from the start
    assert not entries.nth(1).locator("details.ftlib-masked .ftlib-pos").first.is_visible()
    entries.nth(1).locator("summary").first.click()  # the mouse opens entry 1
    check_view(entries.nth(1), "ftlib-masked")
    entries.nth(1).locator("details.ftlib-unmasked > summary").click()
    check_view(entries.nth(1), "ftlib-unmasked")
    entries.nth(0).locator("details.ftlib-masked > summary").click()  # and closes a view
    assert not entries.nth(0).locator("details.ftlib-masked .ftlib-pos").first.is_visible()
    summary = entries.nth(1).locator("details.ftlib-unmasked > summary")
    summary.focus()
    page.keyboard.press("Enter")  # the keyboard closes and opens it
    assert not entries.nth(1).locator("details.ftlib-unmasked .ftlib-pos").first.is_visible()
    page.keyboard.press("Space")
    check_view(entries.nth(1), "ftlib-unmasked")


def test_explorer_works_without_a_kernel_after_run_all_and_after_reopen(page):
    path = OWN / "explorer.ipynb"
    open_notebook(page, path)
    assert not is_dirty(page), "run_notebooks.py's kernel metadata differs from JupyterLab's"
    assert page.locator(".ftlib-explorer").count() == 1
    check_explorer(page)
    run_all(page)
    assert page.locator(".ftlib-explorer").count() == 1, "Run All stacked a second view"
    check_explorer(page)
    screenshot(page, "explorer-after-run-all")
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=30_000)
    open_notebook(page, path)  # saved, signed (trusted), reopened
    assert page.locator(".ftlib-explorer").count() == 1
    check_outputs_render(page, path)
    check_explorer(page)
    assert page.errors == [], page.errors


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS  # English only: the Chinese code is the same
                                  if p.parent == LESSONS and "token_explorer(" in p.read_text()],
                         ids=lambda p: p.name)
def test_lesson_explorer_is_one_view_after_run_all(page, path, tmp_path):
    copy = OWN / f"run-all-{path.name}"  # a copy: the lesson notebook is never changed
    shutil.copy(path, copy)
    open_notebook(page, copy)
    run_all(page)
    calls = sum("token_explorer(" in "".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert page.locator(".ftlib-explorer").count() == calls
    check_explorer(page)


def test_chat_box_answers_a_question(page):
    open_notebook(page, OWN / "chat.ipynb")
    run_all(page)
    page.locator(".widget-text input").fill("Name a colour.")
    page.locator("button", has_text="send").click()
    torch.manual_seed(0)
    model, base = GPTModel(get_config("tiny")), GPTModel(get_config("tiny"))
    tokenizer = get_gpt2_tokenizer()
    answer = list(chat_reply(model, tokenizer, "Name a colour.", max_new_tokens=8))[-1]
    shown = page.locator(".ftlib-chat-fine-tuned span")
    shown.wait_for(timeout=30_000)
    page.wait_for_function("t => document.querySelector('.ftlib-chat-fine-tuned span').innerText === t",
                           arg=answer, timeout=30_000)
    page.locator(".widget-checkbox input").check()  # ask the base model the same
    page.locator(".widget-text input").fill("Name a colour.")
    page.locator("button", has_text="send").click()
    base_answer = list(chat_reply(base, tokenizer, "Name a colour.", max_new_tokens=8))[-1]
    page.wait_for_function("t => document.querySelector('.ftlib-chat-base-model span')?.innerText === t",
                           arg=base_answer, timeout=30_000)
    screenshot(page, "chat")
    assert page.errors == [], page.errors


def _set_locale(page, locale):
    """JupyterLab's interface language, through its settings API (as Settings > Language does)."""
    base, token = page.server
    response = page.request.put(
        f"{base}/lab/api/settings/@jupyterlab/translation-extension:plugin?token={token}",
        data=json.dumps({"raw": json.dumps({"locale": locale})}),
        headers={"Content-Type": "application/json"})
    assert response.ok, response.text()


def test_no_news_prompt(page):
    """`make lab` opens clean: jupyter/overrides.json, which make setup installs into the
    environment's JupyterLab settings, turns the "get notified about official Jupyter
    news?" prompt and the update check off (the server fixture sets neither)."""
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert installed.is_file() and json.loads(installed.read_text()) == json.loads(
        (ROOT / "jupyter" / "overrides.json").read_text()), "run make setup: the settings are not installed"
    open_notebook(page, NOTEBOOKS[0])
    page.wait_for_timeout(3000)  # the prompt appears a moment after the page
    assert "Jupyter news" not in page.locator("body").inner_text()


def test_the_interface_switches_to_chinese_with_the_language_pack(page):
    zh = sorted(LESSONS.glob("zh/0*.ipynb"))
    if not zh:
        pytest.skip("no Chinese notebooks in this folder")
    base, token = page.server
    assert page.request.get(f"{base}/lab/api/translations/zh_CN?token={token}").json()["data"], (
        "the language pack jupyterlab-language-pack-zh-cn is not installed (make setup installs it)")
    _set_locale(page, "zh_CN")
    try:
        open_notebook(page, zh[0])
        menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
        assert "文件" in menus and "编辑" in menus, menus  # File, Edit
        assert "词元" in page.locator(".jp-Notebook").inner_text()  # the notebook's own Chinese
        screenshot(page, "zh-interface")
    finally:
        _set_locale(page, "en")

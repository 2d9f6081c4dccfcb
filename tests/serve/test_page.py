"""The web page in a real browser (Playwright driving Debian's chromium, headless): a message streams
back, the stop button cancels the request on the server, hovering a token shows its alternatives and
clicking one continues from it, and markup in a reply shows as text."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed: `make test` installs it with apt when run as root "
                    "(apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    yield from open_page(browser, server)


def open_page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny')")
    yield page
    context.close()
    assert errors == []  # no script errors, and no alert() from model output


def settings(page, **values):
    page.click("#toggle-settings")
    for key, value in values.items():
        if key == "format_kind":
            page.select_option("#format_kind", value)
        else:
            page.fill(f"#{key}", str(value))
    page.click("#toggle-settings")


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def reply_tokens(page) -> int:
    return page.locator(".msg.assistant .tok").count()


def wait_idle(page):
    page.wait_for_function("!document.getElementById('send').disabled", timeout=60_000)


def test_a_message_streams_back_token_by_token(page):
    settings(page, seed=1, max_tokens=400, format_kind="regex", format_text="[a-z ]{2000}")
    send(page, "Good morrow")
    page.wait_for_selector(".msg.user")
    counts = []
    while not counts or page.locator("#send").is_disabled():
        counts.append(reply_tokens(page))
        time.sleep(0.02)
    counts.append(reply_tokens(page))
    assert len({c for c in counts if 0 < c < counts[-1]}) >= 2  # seen part-way, more than once: streamed
    assert counts[-1] == 400
    text = page.locator(".msg.assistant").inner_text()
    assert text.startswith("assistant") or text.lower().startswith("assistant")
    assert page.locator("#status").inner_text() == "stopped at max tokens"


@pytest.fixture(scope="module")
def long_server(bpe_lm):
    """A server that allows a 500,000-token request (~10 minutes of this tiny model): the stop test's generation
    cannot end on its own before the click, however far the browser lags behind the stream."""
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app
    from tests.serve.conftest import running

    with running(create_app(ServeConfig(model_name="tiny", max_batch=8, max_tokens=500_000), lm=bpe_lm)) as url:
        yield url


@pytest.fixture
def long_page(browser, long_server):
    yield from open_page(browser, long_server)


def test_stop_cancels_the_request_on_the_server(long_page, long_server):
    page, server = long_page, long_server
    settings(page, seed=2, max_tokens=500_000, format_kind="regex", format_text="([a-z ]{100}){10000}")
    send(page, "Speak")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .tok').length > 20")
    assert httpx.get(server + "/health").json()["running"] == 1
    page.wait_for_function("document.getElementById('running').textContent.startsWith('1 running')")
    page.click("#stop")
    wait_idle(page)
    assert page.locator("#status").inner_text() == "stopped"
    for _ in range(50):
        if httpx.get(server + "/health").json()["running"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server + "/health").json()["running"] == 0
    assert "arlm_requests_aborted_total 1.0" in httpx.get(server + "/metrics").text  # cancelled, not finished
    page.wait_for_function("document.getElementById('running').textContent.startsWith('0 running')")
    kept = reply_tokens(page)
    assert 20 < kept < 500_000
    time.sleep(0.5)
    assert reply_tokens(page) == kept  # nothing more arrives


def test_hover_shows_alternatives_and_a_click_continues_from_one(page):
    settings(page, seed=3, max_tokens=30)
    send(page, "Hello")
    wait_idle(page)
    tokens = page.locator(".msg.assistant .tok")
    assert tokens.count() > 5
    tokens.nth(2).hover()
    page.wait_for_selector("#tooltip:not([hidden]) .alt")
    alts = page.locator("#tooltip .alt")
    assert alts.count() == 5
    probs = [float(alts.nth(i).locator("span").nth(1).inner_text().rstrip("%")) for i in range(5)]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.05
    before = [tokens.nth(i).inner_text() for i in range(2)]
    choice = alts.nth(4)
    label = choice.locator("span").nth(0).inner_text()
    choice.click()
    wait_idle(page)
    after = page.locator(".msg.assistant .tok")
    assert [after.nth(i).inner_text() for i in range(2)] == before  # the text before it is kept
    import json
    assert after.nth(2).inner_text() == json.loads(label)  # the chosen alternative, then new tokens
    assert after.count() > 3


def test_markup_in_a_reply_is_shown_as_text(page):
    markup = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    regex = markup.replace(".", "\\.")
    settings(page, seed=4, max_tokens=200, format_kind="regex", format_text=regex)
    send(page, "Say something dangerous")
    wait_idle(page)
    reply = page.locator(".msg.assistant")
    assert markup in reply.inner_text()
    assert page.locator(".msg img, .msg script, #messages img, #messages script").count() == 0
    assert page.evaluate("window.pwned") is None
    page.reload()  # from the saved history too
    page.wait_for_selector(".msg.assistant")
    assert markup in page.locator(".msg.assistant").inner_text()
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("window.pwned") is None
    # a stored reply without its tokens (the plain-text path) is text too
    page.evaluate("""(m) => { const c = JSON.parse(localStorage.getItem('arlm.conversations'));
        c[0].messages[1].tokens = []; c[0].messages[1].content = m;
        localStorage.setItem('arlm.conversations', JSON.stringify(c)); }""", markup)
    page.reload()
    page.wait_for_selector(".msg.assistant")
    assert markup in page.locator(".msg.assistant").inner_text()
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_dark_mode_and_export(page):
    dark = page.evaluate("document.documentElement.classList.contains('dark')")
    page.click("#theme")
    assert page.evaluate("document.documentElement.classList.contains('dark')") != dark
    send(page, "Hi")
    wait_idle(page)
    with page.expect_download() as download:
        page.click("#export")
    import json
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert data[0]["messages"][0] == {"role": "user", "content": "Hi"}
    assert data[0]["messages"][1]["role"] == "assistant"

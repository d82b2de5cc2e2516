"""The product in a real browser: Debian's Chromium driven by Playwright, as a person would.

One uvicorn process serves the real ASGI app against the test database and one
`manage.py db_worker` indexes uploads. The scripted model waits 0.05 s between words, so an
answer visibly arrives in steps. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from playwright.sync_api import Browser, Page, expect, sync_playwright

from apps.accounts.models import User
from tests.conftest import ROOT, database_url

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "pw-for-tests-1"
REFUND = (
    "Refund policy. Customers can return any product within 30 days of delivery and get "
    "their money back in full. Refunds reach the original card within five days."
)
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2;alert(1)">'
# Records every text the newest answer shows, so the test sees it arrive in steps.
WATCH_ANSWER = """() => {
  window.__states = [];
  const log = document.getElementById("messages");
  new MutationObserver(() => {
    const bodies = log.querySelectorAll(".msg.assistant .body");
    const text = bodies.length ? bodies[bodies.length - 1].textContent.trim() : "";
    if (text && window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  }).observe(log, {childList: true, subtree: true, characterData: true});
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The product (uvicorn) and its ingestion worker against the test database."""
    with django_db_blocker.unblock():
        db_url = database_url()
    logs = tmp_path_factory.mktemp("browser")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "settings",
        "AGNO_TELEMETRY": "false",
        "AGENTOS_MODEL_OVERRIDE": "tests.fakes:make_model",
        "FAKE_MODEL_FIRST_TOKEN_DELAY": "0.2",
        "FAKE_MODEL_TOKEN_DELAY": "0.05",
        "MEDIA_ROOT": str(logs / "media"),
    }
    # The server must meet Django's async safety checks: only the tests relax them.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    port = _free_port()
    web_command = [
        sys.executable,
        *("-m", "uvicorn", "settings.asgi:application"),
        *("--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
    ]
    worker_command = [
        *(sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay"),
        *("--interval", "0.1", "--verbosity", "0"),
    ]
    with (logs / "web.log").open("wb") as out:
        web = subprocess.Popen(web_command, cwd=ROOT, env=env, stdout=out, stderr=out)  # noqa: S603
    with (logs / "worker.log").open("wb") as out:
        worker = subprocess.Popen(worker_command, cwd=ROOT, env=env, stdout=out, stderr=out)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, web, logs / "web.log")
        yield url
    finally:
        _stop(web)
        _stop(worker)


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/account/login/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"uvicorn did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Needs Debian's Chromium: apt-get install -y chromium")
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        # Playwright's sync API keeps an event loop in this thread; the tests' own queries
        # (and the database flush after each) are plain synchronous ones all the same.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Problems:
    """What went wrong in the page: uncaught errors, CSP violations and dialogs."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def person(
    server: str, browser: Browser, make_user: Callable[..., User]
) -> Iterator[Callable[..., tuple[Page, Problems]]]:
    """Opens a logged-in browser window of the given size for a new user."""
    contexts = []

    def open_page(width: int = 1280, height: int = 860) -> tuple[Page, Problems]:
        user = make_user()
        context = browser.new_context(
            base_url=server, viewport={"width": width, "height": height}, accept_downloads=True
        )
        contexts.append(context)
        context.set_default_timeout(15_000)
        page = context.new_page()
        problems = Problems(page)
        page.goto("/account/login/")
        page.get_by_label("Email").fill(user.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        return page, problems

    yield open_page
    for context in contexts:
        context.close()
    _wait_until_server_settles()


def _wait_until_server_settles() -> None:
    """Let the server finish its turns' bookkeeping before the test database is flushed."""
    idle, deadline = 0, time.monotonic() + 10
    while idle < 3 and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state NOT IN ('idle') "
                "AND query NOT ILIKE '%%django_tasks_database_dbtaskresult%%'"
            )
            busy = cursor.fetchone()[0]
        idle = idle + 1 if busy == 0 else 0
        time.sleep(0.1)


def create_agent(page: Page, name: str, *, tools: list[str], knowledge: str | None) -> None:
    page.get_by_role("link", name="Agents", exact=True).click()
    page.get_by_role("link", name="New agent").click()
    page.get_by_label("Name").fill(name)
    for tool in tools:
        page.get_by_label(tool, exact=False).check()
    if knowledge:
        page.get_by_label(knowledge).check()
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_text(f"Agent “{name}” created.")).to_be_visible()


def send(page: Page, message: str) -> None:
    box = page.get_by_label("Message")
    box.fill(message)
    box.press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator(".msg.assistant").last


def wait_for_answer(page: Page) -> None:
    expect(last_answer(page).locator(".meta")).to_contain_text("tokens")


def test_a_person_chats_with_an_agent_they_created(
    person: Callable[..., tuple[Page, Problems]],
) -> None:
    page, problems = person()
    ARTIFACTS.mkdir(exist_ok=True)

    page.get_by_role("link", name="Knowledge", exact=True).click()
    page.get_by_label("Name").fill("Handbook")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Handbook")).to_be_visible()
    create_agent(page, "Support", tools=["calculator"], knowledge="Handbook")

    page.locator(".agent-list").get_by_role("link", name="Chat").first.click()
    expect(page.get_by_role("heading", name="Support")).to_be_visible()
    page.evaluate(WATCH_ANSWER)
    send(page, "hello there my good friend how are you today")
    wait_for_answer(page)
    final = "You said: hello there my good friend how are you today"
    expect(last_answer(page).locator(".body")).to_have_text(final)
    states: list[str] = page.evaluate("window.__states")
    partial = [state for state in states if state != final]
    assert len(set(partial)) >= 2, states
    assert all(final.startswith(state) for state in partial), states

    send(page, "calc: 2+3")
    wait_for_answer(page)
    step = last_answer(page).locator("details.step")
    expect(step.locator("summary")).to_contain_text("calculator")
    step.locator("summary").click()
    expect(step).to_contain_text('"expression": "2+3"')
    expect(step.locator("pre").last).to_have_text("5")
    expect(last_answer(page).locator(".body")).to_have_text("The answer is 5.")

    page.locator("input[type=file]").set_input_files(
        files=[{"name": "refunds.txt", "mimeType": "text/plain", "buffer": REFUND.encode()}]
    )
    page.get_by_role("button", name="Upload to Handbook").click()
    document = page.locator(".documents li.document").first
    expect(document).to_contain_text("refunds.txt")
    expect(document.locator(".chip.status")).to_have_text("Ready", timeout=30_000)
    expect(document.locator("progress")).to_have_attribute("value", "100")

    send(page, "search: refund policy")
    wait_for_answer(page)
    sources = last_answer(page).locator(".citations")
    expect(sources.get_by_role("link", name="refunds.txt")).to_be_visible()
    expect(sources).to_contain_text("Customers can return any product")
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

    history = page.locator("#session-list")
    expect(history.get_by_role("link", name="hello there my good friend")).to_be_visible()
    page.get_by_role("link", name="New session").click()
    expect(page.locator("#messages .msg")).to_have_count(0)
    page.locator("#session-list").get_by_role("link", name="hello there my good friend").click()
    expect(page.locator("#messages")).to_contain_text("Found:")

    page.get_by_role("link", name="Rename, export").click()
    page.get_by_label("Title").fill("Refund research")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("heading", name="Refund research")).to_be_visible()
    with page.expect_download() as markdown:
        page.get_by_role("link", name="Markdown").click()
    exported = Path(markdown.value.path()).read_text()
    assert exported.startswith("# Refund research")
    assert "The answer is 5." in exported
    with page.expect_download() as as_json:
        page.get_by_role("link", name="JSON").click()
    data = json.loads(Path(as_json.value.path()).read_text())
    assert data["title"] == "Refund research"
    assert len(data["messages"]) == 6

    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("link", name="Refund research")).to_be_visible()
    expect(page.locator(".chart svg rect")).to_have_count(14)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert problems.errors == []
    assert problems.dialogs == []


def test_agent_output_with_script_is_shown_as_text_and_never_runs(
    person: Callable[..., tuple[Page, Problems]],
) -> None:
    page, problems = person()
    create_agent(page, "Echo", tools=[], knowledge=None)
    page.locator(".agent-list").get_by_role("link", name="Chat").click()

    send(page, f"script: {XSS} and **bold**")
    wait_for_answer(page)
    body = last_answer(page).locator(".body")
    expect(body).to_contain_text("<script>window.__xss=1</script>")
    expect(body).to_contain_text('<img src=x onerror="window.__xss=2;alert(1)">')
    expect(body.locator("strong")).to_have_text("bold")
    assert body.locator("script, img").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None

    page.reload()
    expect(last_answer(page).locator(".body")).to_contain_text("<script>window.__xss=1")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert problems.dialogs == []
    assert problems.errors == []


def test_the_stop_button_ends_a_long_answer(
    person: Callable[..., tuple[Page, Problems]],
) -> None:
    page, problems = person()
    create_agent(page, "Talker", tools=[], knowledge=None)
    page.locator(".agent-list").get_by_role("link", name="Chat").click()
    send(page, "script: " + " ".join(f"word{i}" for i in range(200)))
    page.get_by_role("button", name="Stop").click()
    expect(last_answer(page).locator(".status")).to_contain_text("Stopped")
    words = last_answer(page).locator(".body").inner_text().split()
    assert 0 < len(words) < 200
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    assert problems.errors == []


def test_the_chat_works_at_375_pixels(person: Callable[..., tuple[Page, Problems]]) -> None:
    page, problems = person(width=375, height=812)
    ARTIFACTS.mkdir(exist_ok=True)
    create_agent(page, "Pocket", tools=["calculator"], knowledge=None)
    page.locator(".agent-list").get_by_role("link", name="Chat").click()
    box = page.get_by_label("Message")
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.locator("#messages .msg")).to_have_count(0)
    box.fill("")
    send(page, "calc: 6*7")
    wait_for_answer(page)
    expect(last_answer(page).locator(".body")).to_have_text("The answer is 42.")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "chat-375.png"), full_page=True)
    page.get_by_role("link", name="Dashboard").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(ARTIFACTS / "dashboard-375.png"), full_page=True)
    assert problems.errors == []

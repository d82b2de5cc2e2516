"""Web security: CSRF on every form and htmx request, the CSP, and output that cannot run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.opie.models import ChatSession
from apps.opie.web.rendering import render_markdown, sse_frame
from tests import factories
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def strict(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def things(user: User) -> dict[str, Any]:
    kb = factories.knowledge_base(user)
    agent = factories.agent(user, agent_id="agent-csrf", knowledge_bases=[kb])
    session = factories.session(user, agent, title="kept")
    return {
        "agent_id": agent.agent_id,
        "session_id": session.session_id,
        "kb_id": kb.pk,
        "document_id": factories.document(kb).pk,
    }


POSTS = [
    "/agentos/agents/new/",
    "/agentos/agents/{agent_id}/edit/",
    "/agentos/agents/{agent_id}/delete/",
    "/agentos/chat/{agent_id}/send/",
    "/agentos/runs/some-run/cancel/",
    "/agentos/session/{session_id}/rename/",
    "/agentos/session/{session_id}/delete/",
    "/agentos/knowledge/",
    "/agentos/knowledge/{kb_id}/upload/",
    "/agentos/knowledge/{kb_id}/delete/",
    "/agentos/documents/{document_id}/delete/",
]


@pytest.mark.parametrize("page", POSTS)
def test_every_form_needs_the_csrf_token(strict: Client, things: dict[str, Any], page: str) -> None:
    response = strict.post(page.format(**things), {"title": "x", "message": "hi", "name": "x"})
    assert response.status_code == 403
    assert ChatSession.objects.get(session_id=things["session_id"]).title == "kept"


def test_htmx_requests_send_the_token_from_the_page(strict: Client, things: dict[str, Any]) -> None:
    page = strict.get(f"/agentos/chat/{things['agent_id']}/").content.decode()
    headers = json.loads(re.search(r"hx-headers='([^']+)'", page).group(1))  # type: ignore[union-attr]
    response = strict.post(
        f"/agentos/session/{things['session_id']}/rename/",
        {"title": "renamed"},
        headers={**headers, "HX-Request": "true"},
    )
    assert response.status_code == 302
    assert ChatSession.objects.get(session_id=things["session_id"]).title == "renamed"


@pytest.mark.parametrize(
    "page", ["/agentos/", "/agentos/agents/", "/agentos/knowledge/", "/account/login/"]
)
def test_pages_carry_a_strict_content_security_policy(
    web: Client, things: dict[str, Any], page: str
) -> None:
    policy = web.get(page)["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy


@pytest.mark.parametrize(
    "page",
    [
        "/agentos/",
        "/agentos/agents/",
        "/agentos/agents/new/",
        "/agentos/chat/{agent_id}/",
        "/agentos/session/{session_id}/",
        "/agentos/knowledge/",
        "/agentos/knowledge/{kb_id}/",
        "/account/tokens/",
    ],
)
def test_pages_need_no_inline_script_or_style(
    web: Client, things: dict[str, Any], page: str
) -> None:
    body = web.get(page.format(**things)).content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", body)
    assert not re.search(r"\shx-on", body)


def test_htmx_is_told_not_to_run_scripts_or_eval(web: Client) -> None:
    body = web.get("/agentos/").content.decode()
    config = json.loads(re.search(r'name="htmx-config" content=\'([^\']+)\'', body).group(1))  # type: ignore[union-attr]
    assert config["allowScriptTags"] is False
    assert config["allowEval"] is False
    assert config["historyCacheSize"] == 0


def test_an_unknown_address_gets_the_styled_404(web: Client) -> None:
    response = web.get("/agentos/no/such/page/")
    assert response.status_code == 404
    assert "Back to the dashboard" in response.content.decode()


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ('<img src=x onerror="alert(1)">', '<p>&lt;img src=x onerror="alert(1)"&gt;</p>'),
        ("<div onclick=alert(1)>hi</div>", "&lt;div onclick=alert(1)&gt;hi&lt;/div&gt;"),
        ("**bold** and `code`", "<strong>bold</strong> and <code>code</code>"),
    ],
)
def test_markdown_shows_raw_html_as_text(markdown: str, expected: str) -> None:
    assert expected in render_markdown(markdown)


def test_markdown_drops_script_links_and_remote_images() -> None:
    html = render_markdown(
        "[click](javascript:alert(1)) [ok](https://example.com) ![x](https://evil.test/p.png)"
    )
    assert "javascript:" not in html
    assert 'href="https://example.com" rel="noopener noreferrer nofollow"' in html
    assert "<img" not in html
    assert "evil.test" not in html


def test_an_sse_frame_keeps_every_line_of_its_html_inside_data() -> None:
    assert sse_frame("message", "<p>a</p>\r\n<p>b</p>\rc") == (
        "event: message\ndata: <p>a</p>\ndata: <p>b</p>\ndata: c\n\n"
    )
    assert sse_frame("end") == "event: end\ndata: \n\n"


def test_the_web_views_load_without_agno() -> None:
    probe = (
        "import sys, django; django.setup(); import apps.opie.agentos.views, apps.opie.urls; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('agno')}))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings"}
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"

"""Knowledge pages: create, upload with progress, status and errors, delete, and citations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.accounts.models import User
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import KnowledgeBase, KnowledgeDocument
from tests import factories

HTMX = {"HTTP_HX_REQUEST": "true"}
IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
REFUND = (
    "Refund policy. Customers can return any product within 30 days of delivery and get "
    "their money back in full."
)
Status = KnowledgeDocument.Status


@pytest.fixture(autouse=True)
def _isolated(settings: Any, tmp_path: Path) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def kb(user: User) -> KnowledgeBase:
    return factories.knowledge_base(user, name="Handbook")


@pytest.fixture
def indexing_now(settings: Any, django_capture_on_commit_callbacks: Any) -> Any:
    """Run indexing inside the request, as the worker would right after it."""
    settings.TASKS = IMMEDIATE
    return django_capture_on_commit_callbacks


def upload(web: Client, kb: KnowledgeBase, name: str, content: bytes, **extra: Any) -> Any:
    data = {"file": SimpleUploadedFile(name, content), **extra}
    return web.post(f"/agentos/knowledge/{kb.pk}/upload/", data, **HTMX)


def test_it_creates_a_knowledge_base(web: Client, user: User) -> None:
    response = web.post(
        "/agentos/knowledge/",
        {"name": "Policies", "description": "", "chunk_size": 800, "chunk_overlap": 100},
    )
    kb = KnowledgeBase.objects.get(owner=user)
    assert response["Location"] == f"/agentos/knowledge/{kb.pk}/"
    assert (kb.name, kb.chunk_size, kb.chunk_overlap) == ("Policies", 800, 100)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "chunk_size": 800, "chunk_overlap": 100}, "This field is required."),
        ({"name": "X", "chunk_size": 500, "chunk_overlap": 500}, "Overlap must be smaller"),
        ({"name": "Handbook", "chunk_size": 800, "chunk_overlap": 100}, "already exists"),
    ],
)
def test_creating_a_knowledge_base_shows_errors(
    web: Client, kb: KnowledgeBase, data: dict[str, Any], message: str
) -> None:
    response = web.post("/agentos/knowledge/", {"description": "", **data})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert KnowledgeBase.objects.count() == 1


def test_an_upload_is_queued_and_its_row_polls_for_progress(web: Client, kb: KnowledgeBase) -> None:
    response = upload(web, kb, "refunds.txt", REFUND.encode())
    assert response.status_code == 200
    document = KnowledgeDocument.objects.get(knowledge_base=kb)
    assert document.status == Status.QUEUED
    row = response.content.decode()
    assert f'hx-get="/agentos/documents/{document.pk}/" hx-trigger="every 1s"' in row
    assert 'progress max="100" value="0"' in row
    assert "waiting for a worker" in row


def test_the_status_row_shows_progress_then_stops_polling_when_ready(
    web: Client, kb: KnowledgeBase
) -> None:
    document = factories.document(kb, status=Status.PROCESSING, chunks_done=3, chunk_count=4)
    row = web.get(f"/agentos/documents/{document.pk}/").content.decode()
    assert 'value="75"' in row
    assert "3 of 4 chunks" in row
    assert "hx-trigger" in row
    KnowledgeDocument.objects.filter(pk=document.pk).update(status=Status.READY, chunks_done=4)
    row = web.get(f"/agentos/documents/{document.pk}/").content.decode()
    assert 'value="100"' in row
    assert "Ready" in row
    assert "hx-trigger" not in row


def test_a_failed_document_shows_its_error(web: Client, kb: KnowledgeBase) -> None:
    document = factories.document(kb, status=Status.FAILED, error="The PDF has no text layer.")
    row = web.get(f"/agentos/documents/{document.pk}/").content.decode()
    assert "Failed" in row
    assert "The PDF has no text layer." in row
    assert "hx-trigger" not in row
    assert "The PDF has no text layer." in web.get(f"/agentos/knowledge/{kb.pk}/").content.decode()


def test_a_rejected_upload_says_why_beside_the_form(web: Client, kb: KnowledgeBase) -> None:
    response = upload(web, kb, "tool.exe", b"MZ")
    assert response.status_code == 422
    assert response["HX-Retarget"] == f"#upload-errors-{kb.pk}"
    assert "cannot be added" in response.content.decode()
    assert not KnowledgeDocument.objects.exists()


def test_a_too_large_upload_is_rejected(web: Client, kb: KnowledgeBase, settings: Any) -> None:
    settings.AGENTOS_MAX_UPLOAD_BYTES = 10
    response = upload(web, kb, "big.txt", b"x" * 11)
    assert response.status_code == 422
    assert "limit" in response.content.decode()


def test_an_upload_needs_exactly_one_source(web: Client, kb: KnowledgeBase) -> None:
    response = web.post(f"/agentos/knowledge/{kb.pk}/upload/", {"text": ""}, **HTMX)
    assert response.status_code == 422
    assert "one" in response.content.decode()


def test_without_javascript_an_upload_redirects_with_a_message(
    web: Client, kb: KnowledgeBase
) -> None:
    response = web.post(
        f"/agentos/knowledge/{kb.pk}/upload/", {"text": "Pasted note about wifi."}, follow=True
    )
    assert "indexing has started" in response.content.decode()
    rejected = web.post(
        f"/agentos/knowledge/{kb.pk}/upload/",
        {"file": SimpleUploadedFile("x.exe", b"MZ")},
        follow=True,
    )
    assert "The document was not added" in rejected.content.decode()


def test_an_uploaded_document_is_indexed_and_cited_in_chat(
    web: Client, user: User, kb: KnowledgeBase, indexing_now: Any
) -> None:
    factories.agent(user, agent_id="agent-kb", knowledge_bases=[kb])
    with indexing_now(execute=True):
        upload(web, kb, "refunds.txt", REFUND.encode(), panel="1")
    document = KnowledgeDocument.objects.get()
    assert document.status == Status.READY
    assert 'value="100"' in web.get(f"/agentos/documents/{document.pk}/").content.decode()

    result = AgentOSService(user).send_message("agent-kb", None, "search: refund policy")
    page = web.get(f"/agentos/chat/agent-kb/?session={result['session_id']}").content.decode()
    sources = page[page.index('aria-label="Sources"') :]
    assert f'href="/agentos/knowledge/{kb.pk}/#doc-{document.pk}">refunds.txt</a>' in sources
    assert "Customers can return any product" in sources
    assert "search_knowledge" in page
    export = web.get(f"/agentos/session/{result['session_id']}/export.md").content.decode()
    assert "Sources: refunds.txt" in export


def test_document_text_is_shown_as_text(
    web: Client, user: User, kb: KnowledgeBase, indexing_now: Any
) -> None:
    factories.agent(user, agent_id="agent-kb", knowledge_bases=[kb])
    hostile = "<script>window.__xss=1</script> Refund rules <img src=x onerror=alert(1)>"
    with indexing_now(execute=True):
        web.post(f"/agentos/knowledge/{kb.pk}/upload/", {"text": hostile}, **HTMX)
    result = AgentOSService(user).send_message("agent-kb", None, "search: refund rules")
    page = web.get(f"/agentos/chat/agent-kb/?session={result['session_id']}").content.decode()
    kb_page = web.get(f"/agentos/knowledge/{kb.pk}/").content.decode()
    for body in (page, kb_page):
        assert "<script>window" not in body
        assert "<img src=x" not in body
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in kb_page


def test_the_chat_page_offers_upload_into_the_agents_own_knowledge(
    web: Client, user: User, kb: KnowledgeBase, other_user: User
) -> None:
    factories.agent(user, agent_id="agent-kb", knowledge_bases=[kb])
    theirs = factories.knowledge_base(other_user, name="Theirs")
    factories.agent(other_user, agent_id="agent-vault", is_global=True, knowledge_bases=[theirs])
    page = web.get("/agentos/chat/agent-kb/").content.decode()
    assert f'hx-post="/agentos/knowledge/{kb.pk}/upload/"' in page
    assert 'accept=".txt,.md,.markdown,.html,.htm,.pdf"' in page
    vault_page = web.get("/agentos/chat/agent-vault/").content.decode()
    assert "/upload/" not in vault_page


def test_it_deletes_a_document(web: Client, kb: KnowledgeBase) -> None:
    document = factories.document(kb)
    response = web.post(f"/agentos/documents/{document.pk}/delete/", **HTMX)
    assert (response.status_code, response.content) == (200, b"")
    assert not KnowledgeDocument.objects.exists()


def test_it_deletes_a_knowledge_base(web: Client, kb: KnowledgeBase) -> None:
    factories.document(kb)
    response = web.post(f"/agentos/knowledge/{kb.pk}/delete/", follow=True)
    assert "Knowledge base “Handbook” deleted." in response.content.decode()
    assert not KnowledgeBase.objects.exists()


def test_the_list_counts_documents_by_status(web: Client, kb: KnowledgeBase) -> None:
    factories.document(kb, status=Status.READY)
    factories.document(kb, status=Status.FAILED)
    page = web.get("/agentos/knowledge/").content.decode()
    assert re.search(r"2 documents · 1 ready ·\s*<span class=\"bad\">1 failed</span>", page)

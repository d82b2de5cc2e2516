"""Ingestion: every format and source, limits, bad input, dedupe, deletion, crash recovery."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection

from apps.accounts.models import User
from apps.opie.agentos.knowledge import search
from apps.opie.agentos.knowledge.store import document_lock_key, q, table_name
from apps.opie.documents import document_create, document_delete, documents_recover
from apps.opie.models import KnowledgeBase, KnowledgeDocument
from apps.opie.tasks import ingest_document
from tests import factories

ROOT = Path(__file__).resolve().parent.parent
IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}

REFUND = (
    "Refund policy. Customers can return any product within 30 days of delivery and get "
    "their money back in full. Refunds are paid to the original card within five days."
)
WIFI = "Office wifi. The guest network is called Orchard and its password is on the fridge."


def make_pdf(text: str) -> bytes:
    """A minimal one-page PDF whose text layer is `text`."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 11 Tf 40 750 Td ({escaped}) Tj ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    body, offsets = b"%PDF-1.4\n", []
    for number, content in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{number} 0 obj\n{content}\nendobj\n".encode()
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    return body + f"startxref\n{xref}\n%%EOF\n".encode()


HTML = (
    "<html><head><title>Holiday rules</title><style>body { color: red }</style>"
    "<script>stealCookies('holiday')</script></head><body><h1>Holidays</h1>"
    "<p>Every employee gets twenty-five days of paid holiday per year.</p>"
    "<p>Unused holiday days expire at the end of March.</p></body></html>"
)
PAGES: dict[str, tuple[int, str, bytes]] = {
    "/holidays.html": (200, "text/html; charset=utf-8", HTML.encode()),
    "/manual.pdf": (200, "application/pdf", make_pdf("The espresso machine descales weekly.")),
    "/missing": (404, "text/html", b"<p>Not here</p>"),
    "/image.png": (200, "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/holidays.html")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(2.5)
        status, content_type, body = PAGES.get(self.path, (200, "text/plain", b"slow"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def add(
    settings: Any, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> Callable[..., KnowledgeDocument]:
    """document_create, with tasks run at once: the whole path a request takes."""
    settings.TASKS = IMMEDIATE
    settings.MEDIA_ROOT = tmp_path
    settings.AGENTOS_URL_FETCH_ALLOW_PRIVATE = True

    def add(user: User, kb: KnowledgeBase, **source: Any) -> KnowledgeDocument:
        with django_capture_on_commit_callbacks(execute=True):
            document = document_create(user=user, knowledge_base_id=kb.pk, **source)
        document.refresh_from_db()
        return document

    return add


@pytest.fixture
def kb(user: User) -> KnowledgeBase:
    return factories.knowledge_base(user, chunk_size=300, chunk_overlap=30)


def stored_chunks(document: KnowledgeDocument) -> list[tuple[int, str]]:
    name = table_name(document.knowledge_base_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f"knowledge.{name}"])
        if cursor.fetchone()[0] is None:
            return []
        cursor.execute(
            q("SELECT chunk_index, content FROM {t} WHERE document_id = %s ORDER BY 1", t=name),
            [document.pk],
        )
        return list(cursor.fetchall())


@pytest.mark.parametrize(
    ("source", "question"),
    [
        ({"text": REFUND}, "How do I get my money back?"),
        ({"upload": SimpleUploadedFile("refunds.txt", REFUND.encode())}, "refund window"),
        (
            {"upload": SimpleUploadedFile("refunds.md", f"# Refunds\n\n- {REFUND}".encode())},
            "Can I return a product?",
        ),
        ({"upload": SimpleUploadedFile("holidays.html", HTML.encode())}, "paid holiday days"),
        (
            {"upload": SimpleUploadedFile("manual.pdf", make_pdf("The espresso machine descales"))},
            "coffee machine cleaning",
        ),
    ],
    ids=["text", "txt", "markdown", "html", "pdf"],
)
def test_it_ingests_each_format_and_finds_it(
    add: Callable[..., KnowledgeDocument],
    user: User,
    kb: KnowledgeBase,
    source: dict[str, Any],
    question: str,
) -> None:
    decoy = add(user, kb, text=WIFI)
    document = add(user, kb, **source)

    assert (document.status, document.error) == ("ready", "")
    assert document.chunk_count == document.chunks_done == len(stored_chunks(document)) >= 1
    assert decoy.status == "ready"
    assert search([kb.pk], question)[0].document_id == document.pk


def test_it_strips_scripts_and_styles_from_html(
    add: Callable[..., KnowledgeDocument], user: User, kb: KnowledgeBase
) -> None:
    document = add(user, kb, upload=SimpleUploadedFile("page.html", HTML.encode()))

    text = " ".join(chunk for _, chunk in stored_chunks(document))
    assert "twenty-five days of paid holiday" in text
    assert "Holiday rules" in text
    assert "stealCookies" not in text
    assert "color: red" not in text


@pytest.mark.parametrize(
    ("path", "question"),
    [("/holidays.html", "paid holiday"), ("/manual.pdf", "espresso"), ("/redirect", "holiday")],
)
def test_it_fetches_urls_in_the_worker(
    add: Callable[..., KnowledgeDocument],
    user: User,
    kb: KnowledgeBase,
    site: str,
    path: str,
    question: str,
) -> None:
    document = add(user, kb, url=site + path)

    assert (document.status, document.error) == ("ready", "")
    assert search([kb.pk], question)[0].document_id == document.pk


def test_it_refuses_private_addresses_unless_allowed(
    add: Callable[..., KnowledgeDocument], settings: Any, user: User, kb: KnowledgeBase, site: str
) -> None:
    settings.AGENTOS_URL_FETCH_ALLOW_PRIVATE = False

    document = add(user, kb, url=site + "/holidays.html")

    assert document.status == "failed"
    assert "private or local network address (127.0.0.1)" in document.error
    assert stored_chunks(document) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"upload": SimpleUploadedFile("report.pdf", b"%PDF-1.4\n1 0 obj << /Ty garbage")},
            "This PDF could not be read: the file is damaged",
        ),
        ({"upload": SimpleUploadedFile("empty.txt", b"")}, "The document is empty"),
        ({"upload": SimpleUploadedFile("blank.md", b"  \n\n  ")}, "The document is empty"),
        (
            {"upload": SimpleUploadedFile("photo.txt", b"\x89PNG\r\n\x1a\n" + os.urandom(2048))},
            "This file is not text (it contains binary data)",
        ),
        (
            {"upload": SimpleUploadedFile("scan.pdf", make_pdf(""))},
            "This PDF has no selectable text",
        ),
        ({"url": "http://127.0.0.1:{closed}/doc"}, "could not be reached"),
        ({"url": "{site}/missing"}, "answered 404 Not Found"),
        ({"url": "{site}/slow"}, "did not answer within 1 seconds"),
        ({"url": "{site}/image.png"}, "returned image/png, which cannot be indexed"),
    ],
    ids=[
        "corrupt-pdf",
        "empty",
        "blank",
        "binary-txt",
        "image-pdf",
        "refused",
        "404",
        "slow",
        "png",
    ],
)
def test_it_fails_bad_input_cleanly(
    add: Callable[..., KnowledgeDocument],
    settings: Any,
    user: User,
    kb: KnowledgeBase,
    site: str,
    source: dict[str, Any],
    message: str,
) -> None:
    settings.AGENTOS_URL_FETCH_TIMEOUT = 1
    if "url" in source:
        source = {"url": source["url"].format(site=site, closed=_closed_port())}

    document = add(user, kb, **source)

    assert document.status == "failed"
    assert message in document.error
    assert stored_chunks(document) == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"upload": SimpleUploadedFile("tool.exe", b"MZ")}, "Files of type .exe cannot be added"),
        ({"upload": SimpleUploadedFile("big.txt", b"a " * 600)}, "more than the 0.001 MB limit"),
        ({"text": "   "}, "The text is empty."),
        ({"url": "ftp://example.com/file.txt"}, "Enter a valid http:// or https:// address."),
        ({"text": "x", "url": "https://example.com"}, "Give exactly one of"),
    ],
    ids=["type", "size", "empty-text", "scheme", "two-sources"],
)
def test_it_rejects_uploads_outside_the_limits(
    add: Callable[..., KnowledgeDocument],
    settings: Any,
    user: User,
    kb: KnowledgeBase,
    source: dict[str, Any],
    message: str,
) -> None:
    settings.AGENTOS_MAX_UPLOAD_BYTES = 1000

    with pytest.raises(ValidationError, match=message.replace(".", r"\.").replace("(", r"\(")):
        add(user, kb, **source)

    assert not KnowledgeDocument.objects.exists()


def test_it_limits_chunks_per_document(
    add: Callable[..., KnowledgeDocument], settings: Any, user: User, kb: KnowledgeBase
) -> None:
    settings.AGENTOS_MAX_CHUNKS_PER_DOCUMENT = 3
    long_text = " ".join(f"sentence number {n} about shipping." for n in range(200))

    with pytest.raises(ValidationError, match="more than the limit of 3"):
        add(user, kb, text=long_text)
    document = add(user, kb, upload=SimpleUploadedFile("long.txt", long_text.encode()))

    assert document.status == "failed"
    assert "more than the limit of 3. Split it" in document.error
    assert stored_chunks(document) == []


def test_it_does_not_store_the_same_content_twice(
    add: Callable[..., KnowledgeDocument], user: User, kb: KnowledgeBase
) -> None:
    first = add(user, kb, upload=SimpleUploadedFile("a.txt", REFUND.encode()))
    again = add(user, kb, upload=SimpleUploadedFile("copy-of-a.txt", REFUND.encode()), title="B")
    other_base = add(user, factories.knowledge_base(user), text=REFUND)

    assert again.pk == first.pk
    assert again.title == "a.txt"
    assert KnowledgeDocument.objects.filter(knowledge_base=kb).count() == 1
    assert len(stored_chunks(first)) == first.chunk_count
    assert other_base.pk != first.pk


def test_it_retries_a_failed_document_when_added_again(
    add: Callable[..., KnowledgeDocument], settings: Any, user: User, kb: KnowledgeBase, site: str
) -> None:
    settings.AGENTOS_URL_FETCH_ALLOW_PRIVATE = False
    failed = add(user, kb, url=site + "/holidays.html")
    settings.AGENTOS_URL_FETCH_ALLOW_PRIVATE = True

    retried = add(user, kb, url=site + "/holidays.html")

    assert failed.status == "failed"
    assert (retried.pk, retried.status, retried.error) == (failed.pk, "ready", "")


def test_it_replaces_a_documents_chunks_when_indexing_it_again(
    add: Callable[..., KnowledgeDocument], user: User, kb: KnowledgeBase
) -> None:
    document = add(user, kb, text=" ".join([REFUND, WIFI] * 4))
    before = stored_chunks(document)
    KnowledgeDocument.objects.filter(pk=document.pk).update(status="queued")

    assert ingest_document.call(document.pk) == "ready"

    assert len(before) > 1
    assert stored_chunks(document) == before


def test_it_deletes_a_document_with_its_vectors_and_file(
    add: Callable[..., KnowledgeDocument],
    user: User,
    kb: KnowledgeBase,
    django_capture_on_commit_callbacks: Any,
) -> None:
    document = add(user, kb, upload=SimpleUploadedFile("refunds.txt", REFUND.encode()))
    path = Path(document.file.path)
    assert path.exists()
    assert stored_chunks(document)

    with django_capture_on_commit_callbacks(execute=True):
        document_delete(user=user, document_id=document.pk)

    assert not KnowledgeDocument.objects.filter(pk=document.pk).exists()
    assert stored_chunks(document) == []
    assert not path.exists()
    assert search([kb.pk], "refund") == []


def test_it_answers_foreign_ids_like_missing_ones(
    add: Callable[..., KnowledgeDocument], user: User, other_user: User, kb: KnowledgeBase
) -> None:
    theirs = factories.knowledge_base(other_user)
    their_document = add(other_user, theirs, text=REFUND)

    for knowledge_base_id in (theirs.pk, 10**9):
        with pytest.raises(KnowledgeBase.DoesNotExist):
            document_create(user=user, knowledge_base_id=knowledge_base_id, text="mine now")
    for document_id in (their_document.pk, 10**9):
        with pytest.raises(KnowledgeDocument.DoesNotExist):
            document_delete(user=user, document_id=document_id)
    assert len(stored_chunks(their_document)) == their_document.chunk_count


def test_it_waits_for_reembedding_after_the_embedder_changed(
    add: Callable[..., KnowledgeDocument], user: User, kb: KnowledgeBase
) -> None:
    first = add(user, kb, text=REFUND)
    KnowledgeBase.objects.filter(pk=kb.pk).update(embedder="ollama", dimensions=768)

    waiting = add(user, kb, text=WIFI)

    assert waiting.status == "queued"
    assert f"Run `manage.py agentos_reembed --kb {kb.pk}`" in waiting.error
    assert search([kb.pk], "money back")[0].document_id == first.pk


@pytest.mark.django_db(transaction=True)
def test_it_skips_documents_a_live_worker_holds(user: User, kb: KnowledgeBase) -> None:
    document = factories.document(kb, status="processing", text=REFUND)
    other = psycopg.connect(_libpq_url(), autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s)", [document_lock_key(document.pk)])
    try:
        assert documents_recover() == []
    finally:
        # Unlock explicitly: closing returns before the server has released the lock.
        other.execute("SELECT pg_advisory_unlock(%s)", [document_lock_key(document.pk)])
        other.close()

    assert documents_recover() == [document.pk]
    document.refresh_from_db()
    assert document.status == "queued"


def _libpq_url(scheme: str = "postgresql") -> str:
    conf = connection.settings_dict
    password = f":{quote(conf['PASSWORD'], safe='')}" if conf.get("PASSWORD") else ""
    port = f":{conf['PORT']}" if conf.get("PORT") else ""
    host = quote(conf.get("HOST") or "", safe="")
    return f"{scheme}://{quote(conf['USER'], safe='')}{password}@{host}{port}/{conf['NAME']}"


def _start_worker() -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": _libpq_url("postgres"),
        "DJANGO_SETTINGS_MODULE": "settings",
        "AGNO_TELEMETRY": "false",
    }
    command = [sys.executable, "manage.py", "db_worker", "--no-reload", "--no-startup-delay"]
    return subprocess.Popen(  # noqa: S603 - our own manage.py
        [*command, "--interval", "0.1", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(condition: Callable[[KnowledgeDocument], bool], pk: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition(KnowledgeDocument.objects.get(pk=pk)):
            return
        time.sleep(0.05)
    document = KnowledgeDocument.objects.get(pk=pk)
    pytest.fail(f"timed out: {document.status} {document.chunks_done}/{document.chunk_count}")


def _recover() -> str:
    output = io.StringIO()
    call_command("agentos_ingest_recover", stdout=output)
    return output.getvalue()


@pytest.mark.django_db(transaction=True)
def test_it_recovers_a_document_from_a_killed_worker(user: User) -> None:
    kb = factories.knowledge_base(user, chunk_size=200, chunk_overlap=20)
    text = " ".join(
        f"Paragraph {n} explains how parcel {n} is shipped and tracked." for n in range(700)
    )
    document = document_create(user=user, knowledge_base_id=kb.pk, text=text)

    worker = _start_worker()
    try:
        _wait_for(lambda d: d.status == "processing" and d.chunks_done > 0, document.pk, 40)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    document.refresh_from_db()
    assert document.status == "processing"
    assert 0 < document.chunks_done < document.chunk_count
    assert stored_chunks(document) == []

    # Postgres frees the dead worker's lock once it notices the closed socket: give it a moment.
    deadline = time.monotonic() + 10
    while "Queued 1 " not in _recover() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = _start_worker()
    try:
        _wait_for(lambda d: d.status == "ready", document.pk, 60)
    finally:
        worker.terminate()
        worker.wait(10)

    document.refresh_from_db()
    chunks = stored_chunks(document)
    assert [index for index, _ in chunks] == list(range(document.chunk_count))
    assert document.chunks_done == document.chunk_count == len(chunks) > 100
    assert search([kb.pk], "parcel 345 shipped")[0].document_id == document.pk

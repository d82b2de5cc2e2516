"""Knowledge document services: add (validated, deduplicated, queued), delete, recover.

Adding the same content to the same knowledge base twice returns the document already there
instead of storing a copy, so a retried upload is harmless; when that document had failed,
it is queued again, which is what re-uploading a file that failed means to a person.
"""

from __future__ import annotations

import hashlib
import math
from functools import partial
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.tasks import TaskResultStatus
from django.utils import timezone

from apps.accounts.models import User
from apps.opie.agentos.knowledge import (
    content_type_for,
    delete_document_chunks,
    document_in_progress,
    kind_for_name,
)
from apps.opie.models import KnowledgeBase, KnowledgeDocument
from apps.opie.selectors import documents_for, knowledge_bases_for
from apps.opie.tasks import ingest_document

Status = KnowledgeDocument.Status
TITLE_LENGTH = 255


def document_create(
    *,
    user: User,
    knowledge_base_id: int,
    title: str | None = None,
    text: str | None = None,
    upload: UploadedFile | None = None,
    url: str | None = None,
) -> KnowledgeDocument:
    """Add a document from pasted text, an uploaded file or a URL, and queue its indexing."""
    kb = knowledge_bases_for(user).get(pk=knowledge_base_id)
    if sum(value is not None for value in (text, upload, url)) != 1:
        raise ValidationError("Give exactly one of: text, a file or a URL.")
    document = KnowledgeDocument(knowledge_base=kb)
    if text is not None:
        _from_text(document, kb, text)
    elif upload is not None:
        _from_upload(document, upload)
    else:
        _from_url(document, url or "")
    if title and title.strip():
        document.title = title.strip()[:TITLE_LENGTH]
    return _save_or_existing(document, upload)


def _limit_mb() -> str:
    return f"{settings.AGENTOS_MAX_UPLOAD_BYTES / 1_000_000:g} MB"


def _from_text(document: KnowledgeDocument, kb: KnowledgeBase, text: str) -> None:
    data = text.encode()
    if not text.strip():
        raise ValidationError("The text is empty.")
    if len(data) > settings.AGENTOS_MAX_UPLOAD_BYTES:
        raise ValidationError(f"The text is longer than the {_limit_mb()} limit.")
    # A lower bound of the chunks it makes: each chunk adds at most size - overlap characters.
    step = kb.chunk_size - kb.chunk_overlap
    least_chunks = math.ceil(max(len(text) - kb.chunk_overlap, 1) / step)
    if least_chunks > settings.AGENTOS_MAX_CHUNKS_PER_DOCUMENT:
        raise ValidationError(
            f"The text makes at least {least_chunks:,} chunks, more than the limit of "
            f"{settings.AGENTOS_MAX_CHUNKS_PER_DOCUMENT:,}. Split it into smaller documents."
        )
    document.source = KnowledgeDocument.Source.TEXT
    document.text = text
    document.title = (text.strip().splitlines()[0][:80]).strip()
    document.content_type = "text/plain"
    document.size_bytes = len(data)
    document.content_hash = hashlib.sha256(data).hexdigest()


def _from_upload(document: KnowledgeDocument, upload: UploadedFile) -> None:
    name = PurePosixPath(upload.name or "document").name
    extension = PurePosixPath(name).suffix.lower().lstrip(".")
    allowed = [item.lower().lstrip(".") for item in settings.AGENTOS_ALLOWED_UPLOAD_TYPES]
    kind = kind_for_name(name)
    if kind is None or extension not in allowed:
        raise ValidationError(
            f"Files of type .{extension or '(none)'} cannot be added. "
            f"Allowed: {', '.join('.' + item for item in allowed)}."
        )
    size = upload.size or 0
    if size > settings.AGENTOS_MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"The file is {size / 1_000_000:.1f} MB, more than the {_limit_mb()} limit."
        )
    digest = hashlib.sha256()
    for piece in upload.chunks():
        digest.update(piece)
    upload.seek(0)
    document.source = KnowledgeDocument.Source.FILE
    document.title = name[:TITLE_LENGTH]
    document.content_type = content_type_for(kind)
    document.size_bytes = size
    document.content_hash = digest.hexdigest()


def _from_url(document: KnowledgeDocument, url: str) -> None:
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError as exc:
        raise ValidationError("Enter a valid http:// or https:// address.") from exc
    document.source = KnowledgeDocument.Source.URL
    document.url = url
    document.title = url[:TITLE_LENGTH]
    # The page is only read by the worker, so the same address stands for the same content.
    document.content_hash = hashlib.sha256(b"url\0" + url.encode()).hexdigest()


def _save_or_existing(
    document: KnowledgeDocument, upload: UploadedFile | None
) -> KnowledgeDocument:
    kb = document.knowledge_base
    with transaction.atomic():
        same = KnowledgeDocument.objects.select_for_update().filter(
            knowledge_base=kb, content_hash=document.content_hash
        )
        existing = same.first()
        if existing is None:
            try:
                with transaction.atomic():
                    if upload is not None:
                        name = PurePosixPath(upload.name or "document").name
                        document.file.save(name, upload, save=False)
                    document.save()
            except IntegrityError:
                # Added concurrently by another request: answer with that one.
                if document.file:
                    document.file.delete(save=False)
                existing = same.get()
        if existing is not None:
            if existing.status == Status.FAILED:
                _requeue(existing)
            return existing
        transaction.on_commit(partial(ingest_document.enqueue, document.pk))
        return document


def _requeue(document: KnowledgeDocument) -> None:
    KnowledgeDocument.objects.filter(pk=document.pk).update(
        status=Status.QUEUED, error="", chunks_done=0, chunk_count=0, updated_at=timezone.now()
    )
    document.refresh_from_db()
    transaction.on_commit(partial(ingest_document.enqueue, document.pk))


def document_delete(*, user: User, document_id: int) -> None:
    """Delete one of the user's documents, its vectors and its file."""
    with transaction.atomic():
        document = documents_for(user).select_for_update(of=("self",)).get(pk=document_id)
        delete_document_chunks(document.knowledge_base_id, document.pk)
        if document.file.name:
            transaction.on_commit(partial(document.file.storage.delete, document.file.name))
        document.delete()


def documents_enqueue(document_ids: list[int]) -> None:
    """Queue indexing of these documents once the current transaction commits."""
    for document_id in document_ids:
        transaction.on_commit(partial(ingest_document.enqueue, document_id))


def documents_recover() -> list[int]:
    """Queue again the documents a dead worker left unfinished; returns their ids.

    A document counts as abandoned when no worker holds its lock and, if merely queued,
    no task for it is waiting; run this when workers start (`agentos_ingest_recover`).
    """
    requeued = []
    unfinished = KnowledgeDocument.objects.filter(status__in=[Status.QUEUED, Status.PROCESSING])
    for document_id, status in unfinished.values_list("pk", "status"):
        if document_in_progress(document_id):
            continue
        if status == Status.QUEUED and _task_waiting(document_id):
            continue
        with transaction.atomic():
            updated = KnowledgeDocument.objects.filter(pk=document_id, status=status).update(
                status=Status.QUEUED, chunks_done=0, updated_at=timezone.now()
            )
            if updated:
                _fail_lost_tasks(document_id)
                documents_enqueue([document_id])
                requeued.append(document_id)
    return requeued


def _db_tasks() -> bool:
    from django_tasks_db.backend import DatabaseBackend

    return isinstance(ingest_document.get_backend(), DatabaseBackend)


def _task_waiting(document_id: int) -> bool:
    if not _db_tasks():
        return True
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(
        task_path=ingest_document.module_path,
        status=TaskResultStatus.READY,
        args_kwargs__args=[document_id],
    ).exists()


def _fail_lost_tasks(document_id: int) -> None:
    # The killed worker's task row says RUNNING forever; say what happened to it instead.
    if not _db_tasks():
        return
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(
        task_path=ingest_document.module_path,
        status=TaskResultStatus.RUNNING,
        args_kwargs__args=[document_id],
    ).update(
        status=TaskResultStatus.FAILED,
        finished_at=timezone.now(),
        exception_class_path="apps.opie.tasks.WorkerLost",
        traceback="The worker stopped while running this task; the document was queued again.",
    )

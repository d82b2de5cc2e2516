"""Background jobs, run by `manage.py db_worker` (Django tasks with the django-tasks-db backend)."""

from __future__ import annotations

from django.tasks import task


@task()
def ingest_document(document_id: int) -> str:
    """Index one knowledge document; returns how it ended (ready, failed, queued...)."""
    from apps.opie.agentos import knowledge

    outcome = knowledge.ingest_document(document_id)
    if outcome == knowledge.REQUEUE:
        ingest_document.enqueue(document_id)
    return outcome

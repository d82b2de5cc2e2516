from typing import Any

from django.core.management.base import BaseCommand

from apps.opie.documents import documents_recover


class Command(BaseCommand):
    help = (
        "Queue again the documents a stopped or killed worker left unfinished. "
        "Run it before starting workers: `manage.py agentos_ingest_recover && manage.py db_worker`."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        requeued = documents_recover()
        self.stdout.write(f"Queued {len(requeued)} unfinished documents again.")

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.opie.agentos.embedders import EmbedderError
from apps.opie.agentos.knowledge import KnowledgeMismatch, parse_signature, reembed
from apps.opie.documents import documents_enqueue
from apps.opie.models import KnowledgeBase


class Command(BaseCommand):
    help = "Rebuild a knowledge base's vectors with its configured embedder."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--kb", type=int, required=True, help="Knowledge base id.")
        parser.add_argument(
            "--force", action="store_true", help="Rebuild even when the embedder is unchanged."
        )

    def handle(self, *args: Any, kb: int, force: bool, **options: Any) -> None:
        try:
            base = KnowledgeBase.objects.get(pk=kb)
        except KnowledgeBase.DoesNotExist as exc:
            raise CommandError(f"There is no knowledge base with id {kb}.") from exc
        if base.indexed_embedder:
            stored = parse_signature(base.indexed_embedder)[1]
            if stored != base.dimensions:
                self.stdout.write(
                    f"Dimension mismatch: the stored vectors have {stored} dimensions, "
                    f"'{base.name}' is now set to {base.dimensions}. Rebuilding them."
                )
        try:
            report = reembed(base, force=force, progress=self.stdout.write)
        except (KnowledgeMismatch, EmbedderError) as exc:
            raise CommandError(str(exc)) from exc
        documents_enqueue(report.requeue)
        if report.previous == report.current and not force:
            self.stdout.write(f"'{base.name}' is already embedded with {report.current}.")
        else:
            self.stdout.write(
                f"Re-embedded '{base.name}' with {report.current}: "
                f"{report.chunks} chunks of {report.documents} documents."
            )
        if report.requeue:
            self.stdout.write(f"Queued {len(report.requeue)} waiting documents for indexing.")

from typing import Any

from django.apps import AppConfig


def _knowledge_bases_changed(
    instance: Any, pk_set: set[int] | None, reverse: bool, **_: Any
) -> None:
    """An agent's knowledge bases changed (also from the admin's save_related): rebuild it."""
    from apps.opie.agentos import versions

    versions.bump((pk_set or set()) if reverse else [instance.pk])


class OpieConfig(AppConfig):
    name = "apps.opie"
    label = "opie"
    verbose_name = "Opie agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import m2m_changed

        from apps.opie.models import Agent

        m2m_changed.connect(
            _knowledge_bases_changed,
            sender=Agent.knowledge_bases.through,
            dispatch_uid="opie-agent-knowledge-bases",
        )

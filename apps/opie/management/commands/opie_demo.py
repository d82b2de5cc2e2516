from typing import Any

from django.core.management.base import BaseCommand

from apps.opie.demo import DEMO_EMAIL, DEMO_PASSWORD, ensure_demo_account


class Command(BaseCommand):
    help = "Create the demo account with its agents and knowledge base (safe to run again)."

    def handle(self, *args: Any, **options: Any) -> None:
        _, created = ensure_demo_account()
        state = "created" if created else "already there"
        self.stdout.write(f"Demo account {state}: {DEMO_EMAIL} / {DEMO_PASSWORD}")

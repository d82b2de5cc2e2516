from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import User
from apps.accounts.tokens import token_create


class Command(BaseCommand):
    help = "Create an API token for a user and print it once (only its hash is stored)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--user", required=True, help="Email address of the token's owner.")
        parser.add_argument("--name", required=True, help="A name to recognise the token by.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get_by_natural_key(options["user"])
        except User.DoesNotExist:
            raise CommandError(f"No user with email {options['user']!r}.") from None
        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be empty.")
        _, raw = token_create(user=user, name=name)
        self.stdout.write(raw)

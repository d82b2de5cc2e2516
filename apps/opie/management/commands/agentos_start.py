from __future__ import annotations

import os
from argparse import ArgumentParser
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.management.base import BaseCommand

if TYPE_CHECKING:
    from starlette.types import ASGIApp

# uvicorn's reloader imports the app in a fresh process, before Django is set up: this module
# imports no models at the top, and the --user-id travels in the environment.
USER_ID_ENV = "OPIE_AGENTOS_USER_ID"
FACTORY = "apps.opie.management.commands.agentos_start:server_app"


def server_app() -> ASGIApp:
    """uvicorn's app factory: set Django up, then build the server for OPIE_AGENTOS_USER_ID."""
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    from apps.opie.agentos.server import create_app

    user_id = os.environ.get(USER_ID_ENV)
    return create_app(only_user_id=int(user_id) if user_id else None)


class Command(BaseCommand):
    help = (
        "Serve the embedded AgentOS server (agno's AgentOS API) with uvicorn. Callers send "
        "'Authorization: Bearer <API token>' and see and run only their own agents (plus vault "
        "agents) and sessions; /health answers without a token."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--host",
            default=settings.AGENTOS_DEFAULT_HOST,
            help="Interface to listen on (default: AGENTOS_DEFAULT_HOST, %(default)s).",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=settings.AGENTOS_DEFAULT_PORT,
            help="Port to listen on (default: AGENTOS_DEFAULT_PORT, %(default)s).",
        )
        parser.add_argument(
            "--user-id",
            type=int,
            help="Serve only this user's agents; other users' tokens are refused (403).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            default=settings.AGENTOS_AUTO_RELOAD,
            help="Restart when Python files change (default: AGENTOS_AUTO_RELOAD, %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        import uvicorn

        from apps.opie.management.selection import resolve_user

        user = resolve_user(options["user_id"])
        host, port, reload = options["host"], options["port"], options["reload"]
        whose = f"the agents of {user.email} (user {user.pk})" if user else "each caller's agents"
        self.stdout.write(f"AgentOS server on http://{host}:{port}/ serving {whose}.")
        if not settings.AGENTOS_ENABLED:
            self.stderr.write("AGENTOS_ENABLED is off: every route but /health answers 503.")
        log_level = "debug" if settings.AGENTOS_DEBUG else "info"
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "lifespan": "on",
            "log_level": log_level,
            # Open SSE streams must not hold a Ctrl-C or a deploy forever.
            "timeout_graceful_shutdown": 10,
        }
        if reload:
            os.environ[USER_ID_ENV] = str(user.pk) if user else ""
            base = settings.BASE_DIR
            dirs = [str(base / "apps"), str(base / "settings")]
            uvicorn.run(FACTORY, factory=True, reload=True, reload_dirs=dirs, **common)
        else:
            from apps.opie.agentos.server import create_app

            uvicorn.run(create_app(only_user_id=user.pk if user else None), **common)

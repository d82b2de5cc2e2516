"""Set up Django for a benchmark script run from the repository root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(scripted_model: bool = True) -> None:
    """Configure Django (and the scripted model) so a script can use the product's code."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    os.environ.setdefault("AGNO_TELEMETRY", "false")
    if scripted_model:
        os.environ.setdefault("AGENTOS_MODEL_OVERRIDE", "tests.fakes:make_model")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

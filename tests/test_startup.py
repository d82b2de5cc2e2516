"""agno takes seconds to import: Django must start without it and load it on first use."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import sys, django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns  # imports every view module
from django.test import Client
Client().get("/account/login/")
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith(("agno", "fastapi"))}))
"""


def test_it_starts_django_and_serves_a_page_without_importing_agno() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings"}
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"

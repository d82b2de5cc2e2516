from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.conftest import ROOT

# Settings that a deployment could set to weaken the defaults; the test wants the defaults.
OVERRIDES = (
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_SSL_REDIRECT",
    "SECURE_CSP_REPORT_ONLY",
    "SECRET_KEY_FILE",
)


def test_it_passes_the_deploy_checks_with_production_settings() -> None:
    env = {key: value for key, value in os.environ.items() if key not in OVERRIDES}
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(60),
        ALLOWED_HOSTS="example.com",
        DJANGO_SETTINGS_MODULE="settings",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNING" not in output

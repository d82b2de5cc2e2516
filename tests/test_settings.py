from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT

PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.core.cache import cache
from django.db import connection
key = "probe-" + __import__("os").environ["PROBE_KEY"]
cache.set(key, "round-trip", 60)
with connection.cursor() as cur:
    cur.execute("SELECT 1")
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "host": settings.DATABASES["default"]["HOST"],
    "cache": settings.CACHES["default"]["BACKEND"],
    "cached": cache.get(key),
    "agentos": [settings.AGENTOS_ENABLED, settings.AGENTOS_DEFAULT_HOST,
                settings.AGENTOS_DEFAULT_PORT, settings.AGENTOS_CACHE_TTL,
                settings.AGENTOS_INCLUDE_VAULT_AGENTS, settings.AGENTOS_DEBUG],
}))
"""


def probe(**env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    environ.update(DJANGO_SETTINGS_MODULE="settings", PROBE_KEY=uuid.uuid4().hex, **env)
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    result["key"] = environ["PROBE_KEY"]
    return result


def test_it_falls_back_to_the_embedded_postgres_with_pgvector() -> None:
    result = probe()
    assert result["engine"] == "django.db.backends.postgresql"
    assert (Path(str(result["host"])) / ".s.PGSQL.5432").is_socket()
    assert result["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert result["agentos"] == [True, "127.0.0.1", 7777, 1800, True, False]


def test_it_uses_django_redis_and_really_round_trips_through_redis(redis_url: str) -> None:
    result = probe(REDIS_URL=redis_url)
    assert result["cache"] == "django_redis.cache.RedisCache"
    assert result["cached"] == "round-trip"
    stored = redis.Redis.from_url(redis_url).get(f"opie:1:probe-{result['key']}")
    assert stored is not None


def test_it_reads_agentos_settings_from_the_environment() -> None:
    result = probe(
        AGENTOS_ENABLED="false",
        AGENTOS_DEFAULT_PORT="8080",
        AGENTOS_CACHE_TTL="60",
        AGENTOS_INCLUDE_VAULT_AGENTS="0",
        AGENTOS_DEBUG="yes",
    )
    assert result["agentos"] == [False, "127.0.0.1", 8080, 60, False, True]


def test_it_requires_a_secret_key_outside_debug() -> None:
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "DEBUG": "false"}
    environ.pop("SECRET_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "Set SECRET_KEY" in out.stderr


@pytest.mark.django_db
def test_the_database_has_the_vector_extension() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector")
        (distance,) = cursor.fetchone()
    assert 0 < distance < 0.01

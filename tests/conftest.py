from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.accounts.tokens import token_create

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    counter = iter(range(1, 1_000_000))

    def make(email: str | None = None, password: str = "pw-for-tests-1", **extra: object) -> User:  # noqa: S107
        return User.objects.create_user(
            email or f"user{next(counter)}@example.com", password, **extra
        )

    return make


@pytest.fixture
def user(make_user: Callable[..., User]) -> User:
    return make_user("alice@example.com")


@pytest.fixture
def other_user(make_user: Callable[..., User]) -> User:
    return make_user("mallory@example.com")


@pytest.fixture
def token(user: User) -> str:
    return token_create(user=user, name="tests")[1]


@pytest.fixture
def api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def web(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.3).ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server on a fixed free port, that a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("These tests need Redis: set REDIS_URL or install redis-server.")
        self.process = subprocess.Popen(  # noqa: S603 - a fixed local binary
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            if _redis_answers(self.url):
                return
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when it answers (CI), else a throwaway redis-server started for the run."""
    url = os.environ.get("REDIS_URL", "")
    if url and _redis_answers(url):
        yield url
        return
    server = RedisServer()
    server.start()
    yield server.url
    server.stop()


@contextlib.contextmanager
def uvicorn_serving(
    env: dict[str, str], log: Path, never_logged: tuple[str, ...] = ("Traceback",)
) -> Iterator[str]:
    """`uvicorn settings.asgi:application` on a free port, scripted model; yields its URL.

    Afterwards, none of `never_logged` may appear in the server's log.
    """
    port = free_port()
    command = [
        sys.executable,
        *("-m", "uvicorn", "settings.asgi:application"),
        *("--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
    ]
    full_env = {
        **os.environ,
        "AGNO_TELEMETRY": "false",
        "AGENTOS_MODEL_OVERRIDE": "tests.fakes:make_model",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=out)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"{url}/api/v1/agentos/health/"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    logged = log.read_text()
    for text in never_logged:
        assert text not in logged, logged


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


# Every agent built in the suite talks to the scripted model unless a test removes this.
os.environ.setdefault("AGENTOS_MODEL_OVERRIDE", "tests.fakes:make_model")


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make agents talk to their configured provider instead of the suite's scripted model."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.delenv("AGENTOS_MODEL_OVERRIDE", raising=False)
    with contextlib.suppress(ImproperlyConfigured):
        monkeypatch.setattr(settings, "AGENTOS_MODEL_OVERRIDE", "", raising=False)


@pytest.fixture(autouse=True)
def _orm_calls_on_the_tests_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's rows live in its open transaction: ORM calls must run where it can see them.

    Servers the tests start in subprocesses keep the production setting.
    """
    from django.conf import settings

    monkeypatch.setattr(settings, "AGENTOS_SYNC_THREADS", 0)


@pytest.fixture(autouse=True)
def _fresh_agent_cache() -> Iterator[None]:
    """Built agents are per process; tests must not see each other's."""
    from apps.opie.agentos.config import agent_os_config

    agent_os_config.clear()
    yield
    agent_os_config.clear()


def database_url() -> str:
    """A DATABASE_URL for subprocesses, naming the database this test run uses."""
    from urllib.parse import quote

    from django.db import connection

    conf = connection.settings_dict
    password = f":{quote(conf['PASSWORD'], safe='')}" if conf.get("PASSWORD") else ""
    port = f":{conf['PORT']}" if conf.get("PORT") else ""
    host = quote(conf.get("HOST") or "localhost", safe="")
    return f"postgres://{conf['USER']}{password}@{host}{port}/{conf['NAME']}"

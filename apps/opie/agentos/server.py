"""The embedded AgentOS server: agno's AgentOS FastAPI app behind Opie's API tokens.

`AgentOSServer` is a small ASGI app in front of agno's:

- **Who.** It authenticates `Authorization: Bearer <token>` (or `Token <token>`) with the
  product's API tokens and hands the request to an AgentOS app holding exactly that user's
  agents (`agent_os_config.initialize_agent_os`). Those apps live in a bounded per-process LRU,
  rebuilt when the (agent pk, config version) signature of the user's visible agents changes or
  after `AGENTOS_CACHE_TTL`, so new agents and edits show up without a restart.
- **Identity from the token only.** It writes the request state agno's own JWT middleware
  writes for a verified caller (`user_id`, `authenticated`, `user_isolation_enabled`), so every
  agno router scopes sessions, runs and memories to `str(user.pk)` through
  `get_scoped_user_id`, and a `user_id` sent in a query, form or body loses. Query strings are
  also stripped of `user_id`, `db_id` and `table`.
- **Routes are allow-listed** (`ROUTES`); everything else agno serves answers 404: metrics,
  traces, evals, components, schedules, approvals, databases, service accounts, teams,
  workflows and MCP are unscoped across users or not part of the product, and agno's knowledge
  routes take client-chosen filters while Opie's knowledge is Django rows searched by a
  server-bound tool. Session delete and rename go through `AgentOSService`, so the Django
  session row and agno's history change together.
- **Runs.** The form of `POST /agents/{id}/runs` is rebuilt from `message`, `stream` and
  `session_id` only: `user_id`, `knowledge_filters`, `dependencies`, `session_state`,
  `metadata`, `version`, `background`, media and any other field would become a run keyword.
  The session is first claimed through `AgentOSService.prepare_turn` (created when absent), so
  another user's session is 404 and the run joins the history every door reads.
- **Lifespan.** agno's AgentOS lifespan provisions the storage tables and, on exit, closes the
  database pool and agno's process-wide HTTP clients. Every per-user AgentOS shares the one
  `PostgresDb`, so these are process resources: the server enters the lifespan of one
  storage-only AgentOS at startup and exits it at shutdown. Entering one per user would
  re-check every table on each build, and exiting one on eviction would close the pool and
  HTTP clients under the other users' running requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from apps.accounts.tokens import parse_authorization, user_for_token
from apps.opie import selectors
from apps.opie.agentos import versions
from apps.opie.agentos.config import (
    UNVERSIONED_TTL,
    AgentsUnavailable,
    agent_os_config,
    ensure_enabled,
)
from apps.opie.agentos.loopdb import loop_db
from apps.opie.agentos.service import AgentOSService, InvalidInput, NotFound
from apps.opie.outages import (
    DATABASE_UNAVAILABLE,
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
    is_database_outage,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from apps.accounts.models import User

logger = logging.getLogger(__name__)

DEFAULT_MAX_APPS = 256
MAX_BODY_BYTES = 2 * 1024 * 1024
RUN_FIELDS = ("message", "stream", "session_id")
STRIPPED_QUERY = frozenset({"user_id", "db_id", "table"})
TRUE_VALUES = frozenset({"true", "1", "yes", "on", "t", "y"})
FALSE_VALUES = frozenset({"false", "0", "no", "off", "f", "n"})
ERROR_CODES = {400: "invalid", 404: "not_found", 413: "too_large", 422: "invalid"}
# agno installs its own authentication when these are set, and it would refuse Opie's tokens.
AGNO_AUTH_ENV = ("OS_SECURITY_KEY", "JWT_VERIFICATION_KEY", "JWT_JWKS_FILE")

# (method, path template, how the request is handled); `*` matches one path segment.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/config", "forward"),
    ("GET", "/info", "forward"),
    ("GET", "/agents", "forward"),
    ("GET", "/agents/*", "forward"),
    ("POST", "/agents/*/runs", "run"),
    ("GET", "/agents/*/runs", "forward"),
    ("GET", "/agents/*/runs/*", "forward"),
    ("POST", "/agents/*/runs/*/cancel", "forward"),
    ("GET", "/sessions", "forward"),
    ("GET", "/sessions/*", "forward"),
    ("DELETE", "/sessions/*", "delete_session"),
    ("POST", "/sessions/*/rename", "rename_session"),
    ("GET", "/sessions/*/runs", "forward"),
    ("GET", "/sessions/*/runs/*", "forward"),
    ("GET", "/sessions/*/run-previews", "forward"),
    ("GET", "/memories", "forward"),
    ("POST", "/memories", "forward"),
    ("GET", "/memories/*", "forward"),
    ("PATCH", "/memories/*", "forward"),
    ("DELETE", "/memories/*", "delete_memory"),
    ("GET", "/memory_topics", "forward"),
    ("GET", "/user_memory_stats", "forward"),
)

Signature = tuple[Any, ...]


class BadRequest(Exception):
    """A request the server refuses before agno sees it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def match_route(method: str, path: str) -> tuple[str, list[str]] | None:
    """The handling of an allowed (method, path) and its path parameters, else None."""
    segments = path.strip("/").split("/")
    for allowed_method, template, kind in ROUTES:
        parts = template.strip("/").split("/")
        if allowed_method != method or len(parts) != len(segments):
            continue
        if all(
            part in ("*", segment) and segment
            for part, segment in zip(parts, segments, strict=True)
        ):
            return kind, [s for p, s in zip(parts, segments, strict=True) if p == "*"]
    return None


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The product's JSON error body."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _authenticate(raw: str) -> tuple[User, Signature] | None:
    """The token's user and the signature of the agents they may use (one thread hop)."""
    # Django closes stale connections around its own requests; this server has no such hook.
    close_old_connections()
    user = user_for_token(raw)
    if user is None:
        return None
    pks = sorted(selectors.agents_for(user).values_list("pk", flat=True))
    current = versions.agent_versions(pks)
    signature: Signature = tuple((pk, current[pk]) for pk in pks)
    if any(version is None for version in current.values()):
        # The shared cache is down, so edits cannot be seen: rebuild now and then instead.
        signature += (int(time.monotonic() // UNVERSIONED_TTL),)
    return user, signature


def _build_user_app(user: User) -> ASGIApp:
    app: ASGIApp = agent_os_config.initialize_agent_os(user).get_app()
    return app


@dataclass
class _Entry:
    signature: Signature
    app: ASGIApp
    built_at: float


class UserApps:
    """A bounded LRU of per-user AgentOS apps, rebuilt when the user's agents change."""

    def __init__(self, max_entries: int = DEFAULT_MAX_APPS) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = asyncio.Lock()

    def _fresh(self, user_pk: int, signature: Signature) -> ASGIApp | None:
        entry = self._entries.get(user_pk)
        if entry is None or entry.signature != signature:
            return None
        if time.monotonic() - entry.built_at > settings.AGENTOS_CACHE_TTL:
            return None
        self._entries.move_to_end(user_pk)
        return entry.app

    async def get(self, user: User, signature: Signature) -> ASGIApp:
        """The user's AgentOS app, built (off the event loop) when missing or stale."""
        app = self._fresh(user.pk, signature)
        if app is not None:
            return app
        async with self._lock:
            app = self._fresh(user.pk, signature)
            if app is None:
                app = await sync_to_async(_build_user_app)(user)
                self._entries[user.pk] = _Entry(signature, app, time.monotonic())
                self._entries.move_to_end(user.pk)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return app


class AgentOSServer:
    """The ASGI app `agentos_start` serves: token auth, then the caller's own AgentOS."""

    def __init__(self, only_user_id: int | None = None, max_apps: int = DEFAULT_MAX_APPS) -> None:
        self.only_user_id = only_user_id
        self.apps = UserApps(max_apps)
        self._lifespans = AsyncExitStack()
        self._storage_app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            # agno's WebSocket routes serve workflows, which the product does not expose.
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("AgentOS server failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._lifespans.aclose()
                await loop_db.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Refuse conflicting agno auth settings, then enter agno's process-wide lifespan."""
        if not settings.AGENTOS_ENABLED:
            return
        conflicting = [name for name in AGNO_AUTH_ENV if os.environ.get(name)]
        if conflicting:
            raise RuntimeError(
                f"Unset {', '.join(conflicting)}: the Opie AgentOS server authenticates callers "
                "with Opie API tokens, and agno's own authentication would refuse them."
            )
        app = await sync_to_async(_build_storage_app)()
        await self._lifespans.enter_async_context(app.router.lifespan_context(app))
        self._storage_app = app

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop_db.serve()
        path = scope["path"].rstrip("/") or "/"
        if path == "/health":
            body = {"status": "ok", "agents_enabled": bool(settings.AGENTOS_ENABLED)}
            await JSONResponse(body)(scope, receive, send)
            return
        try:
            ensure_enabled()
        except AgentsUnavailable as exc:
            await error_response(503, "agents_unavailable", str(exc))(scope, receive, send)
            return
        headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if preflight and self._storage_app is not None:
            # A browser's CORS preflight carries no token; agno's CORS middleware answers it.
            await self._storage_app(scope, receive, send)
            return
        try:
            response_or_app = await self._dispatch(scope, receive, path, headers)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            logger.warning("Database unavailable: %s", " ".join(str(exc).split()))
            response_or_app = error_response(
                503, DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE
            )
            response_or_app.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        if isinstance(response_or_app, Response):
            await response_or_app(scope, receive, send)
        else:
            app, scoped, replay = response_or_app
            await app(scoped, replay, send)

    async def _dispatch(
        self, scope: Scope, receive: Receive, path: str, headers: Headers
    ) -> Response | tuple[ASGIApp, Scope, Receive]:
        raw = parse_authorization(headers.get("authorization"))
        found = await sync_to_async(_authenticate)(raw) if raw else None
        if found is None:
            return error_response(401, "unauthorized", "A valid API token is required.")
        user, signature = found
        if self.only_user_id is not None and user.pk != self.only_user_id:
            return error_response(403, "forbidden", "This server serves another user's agents.")
        route = match_route(scope["method"], path)
        if route is None:
            return error_response(404, "not_found", "Not found.")
        kind, params = route
        service = AgentOSService(user)
        try:
            if kind == "delete_session":
                await sync_to_async(service.delete_session)(params[0])
                return Response(status_code=204)
            if kind == "delete_memory" and not await sync_to_async(_owns_memory)(user, params[0]):
                # agno would answer 204 and delete nothing: say plainly that it is not theirs.
                raise NotFound(f"Memory {params[0]!r} not found.")
            app = await self.apps.get(user, signature)
            if kind == "run":
                scope, receive = await _claim_run(service, params[0], scope, receive)
            elif kind == "rename_session":
                scope, receive = await _rename_session(service, params[0], scope, receive)
        except ClientDisconnect:
            return Response(status_code=400)
        except NotFound as exc:
            return error_response(404, "not_found", str(exc))
        except InvalidInput as exc:
            return error_response(400, "invalid", str(exc))
        except BadRequest as exc:
            return error_response(exc.status, ERROR_CODES.get(exc.status, "invalid"), str(exc))
        except AgentsUnavailable as exc:
            return error_response(503, "agents_unavailable", str(exc))
        return app, _as_user(scope, user), receive


def _owns_memory(user: User, memory_id: str) -> bool:
    db = agent_os_config.get_db()
    return db.get_user_memory(memory_id, deserialize=False, user_id=str(user.pk)) is not None


def _build_storage_app() -> FastAPI:
    from agno.os import AgentOS

    storage = AgentOS(
        id="opie-storage", db=agent_os_config.get_db(), telemetry=False, auto_provision_dbs=True
    )
    return storage.get_app()


def _as_user(scope: Scope, user: User) -> Scope:
    """The scope agno sees: the token's user as its verified, isolated caller."""
    state = dict(scope.get("state") or {})
    state.update(
        user_id=str(user.pk),
        authenticated=True,
        user_isolation_enabled=True,
        authorization_enabled=False,
        scopes=[],
    )
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    kept = urlencode([(key, value) for key, value in query if key not in STRIPPED_QUERY])
    return {**scope, "state": state, "query_string": kept.encode("latin-1")}


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "The request body is too large.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replace_body(
    scope: Scope, receive: Receive, body: bytes, content_type: str
) -> tuple[Scope, Receive]:
    """The scope and receive of the same request carrying a new body."""
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if name.lower() not in (b"content-type", b"content-length", b"transfer-encoding")
    ]
    headers += [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Later reads wait for the disconnect, which a streaming response listens for.
        return await receive()

    return {**scope, "headers": headers}, replay


async def _claim_run(
    service: AgentOSService, agent_id: str, scope: Scope, receive: Receive
) -> tuple[Scope, Receive]:
    """Keep only allow-listed run fields and claim the run's session for the caller."""
    body = await _read_body(receive)
    _, original = _replace_body(scope, receive, body, Headers(scope=scope).get("content-type", ""))
    try:
        # No uploads: the product's runs are text, and agno would turn files into run media.
        form = await Request(scope, original).form(max_files=0, max_fields=64)
    except (MultiPartException, ValueError) as exc:
        raise BadRequest(400, f"The run form could not be read: {exc}") from None
    fields = {name: form.get(name) for name in RUN_FIELDS}
    message = fields["message"]
    max_chars = int(getattr(settings, "AGENTOS_MAX_MESSAGE_CHARS", 32_000))
    if not isinstance(message, str) or not message.strip():
        raise BadRequest(422, "A non-empty message is required.")
    if len(message) > max_chars:
        raise BadRequest(422, f"The message is longer than {max_chars} characters.")
    kept = {"message": message}
    stream = fields["stream"]
    if isinstance(stream, str):
        # Checked here, not by agno, so a refused run leaves no claimed session behind.
        if stream.lower() not in TRUE_VALUES | FALSE_VALUES:
            raise BadRequest(422, "stream must be true or false.")
        kept["stream"] = "true" if stream.lower() in TRUE_VALUES else "false"
    session_id = fields["session_id"] if isinstance(fields["session_id"], str) else None
    _, session = await sync_to_async(service.prepare_turn)(agent_id, session_id or None, message)
    kept["session_id"] = session.session_id
    return _replace_body(
        scope, receive, urlencode(kept).encode(), "application/x-www-form-urlencoded"
    )


async def _rename_session(
    service: AgentOSService, session_id: str, scope: Scope, receive: Receive
) -> tuple[Scope, Receive]:
    """Rename through the service, then let agno answer with its own session detail."""
    try:
        name = json.loads(await _read_body(receive)).get("session_name")
    except (ValueError, AttributeError):
        raise BadRequest(400, 'Send a JSON body {"session_name": "..."}.') from None
    if not isinstance(name, str):
        raise BadRequest(400, "session_name must be a string.")
    renamed = await sync_to_async(service.rename_session)(session_id, name)
    body = json.dumps({"session_name": renamed["title"]}).encode()
    return _replace_body(scope, receive, body, "application/json")


def create_app(only_user_id: int | None = None) -> AgentOSServer:
    """The embedded AgentOS server, serving one user's agents when `only_user_id` is given."""
    return AgentOSServer(only_user_id=only_user_id)

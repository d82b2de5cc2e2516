"""Forms of the web pages: they parse and validate input; services do the writing."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from apps.accounts.models import User
from apps.opie import selectors
from apps.opie.agentos.tools import tool_registry
from apps.opie.models import AGENT_ID, Agent, KnowledgeBase, ModelConfig

# The services name some fields after the API's request bodies.
SERVICE_FIELD_NAMES = {"model_config_id": "model_config", "knowledge_base_ids": "knowledge_bases"}


class ServiceErrorsMixin:
    """Show a service's ValidationError on the form fields it names."""

    def add_service_errors(self, exc: ValidationError) -> None:
        """Attach each message to its field, or to the form when no field matches."""
        form: forms.Form = self  # type: ignore[assignment]
        if not hasattr(exc, "error_dict"):
            form.add_error(None, exc.messages)
            return
        for name, errors in exc.message_dict.items():
            field = SERVICE_FIELD_NAMES.get(name, name)
            form.add_error(field if field in form.fields else None, errors)


def _tool_choices() -> list[tuple[str, str]]:
    choices = []
    for name, function in sorted(tool_registry().items()):
        summary = (function.__doc__ or "").strip().splitlines()
        choices.append((name, f"{name}: {summary[0]}" if summary else name))
    return choices


class AgentForm(ServiceErrorsMixin, forms.Form):
    """Create or edit one of the user's agents."""

    name = forms.CharField(max_length=100)
    agent_id = forms.CharField(
        label="Agent id",
        max_length=64,
        required=False,
        validators=[AGENT_ID],
        help_text="Used in URLs and by API clients. Leave empty for a generated one.",
    )
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )
    instructions = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        max_length=20_000,
        help_text="How the agent should behave. Empty means a short helpful default.",
    )
    model_config = forms.ModelChoiceField(
        queryset=ModelConfig.objects.none(),
        required=False,
        empty_label="Built-in local model",
        label="Model",
    )
    tools = forms.MultipleChoiceField(
        required=False, choices=[], widget=forms.CheckboxSelectMultiple
    )
    knowledge_bases = forms.ModelMultipleChoiceField(
        queryset=KnowledgeBase.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The agent searches these and cites what it used.",
    )
    is_active = forms.BooleanField(required=False, initial=True, label="Active")

    def __init__(self, *args: Any, user: User, agent: Agent | None = None, **kwargs: Any) -> None:
        if agent is not None:
            kwargs.setdefault("initial", _agent_initial(agent))
        super().__init__(*args, **kwargs)
        self.agent = agent
        if agent is not None:
            # The id is in URLs, sessions and API clients: it is chosen once.
            del self.fields["agent_id"]
        cast(
            forms.ModelChoiceField, self.fields["model_config"]
        ).queryset = selectors.model_configs_for(user)
        knowledge_bases = selectors.knowledge_bases_for(user)
        cast(
            forms.ModelMultipleChoiceField, self.fields["knowledge_bases"]
        ).queryset = knowledge_bases
        self.has_knowledge_bases = knowledge_bases.exists()
        cast(forms.MultipleChoiceField, self.fields["tools"]).choices = _tool_choices()

    def service_data(self) -> dict[str, Any]:
        """The cleaned data in the shape the agent services take."""
        data = self.cleaned_data
        config = data["model_config"]
        values = {
            "name": data["name"],
            "description": data["description"],
            "instructions": data["instructions"],
            "tools": list(data["tools"]),
            "is_active": data["is_active"],
            "model_config_id": config.pk if config else None,
            "knowledge_base_ids": [kb.pk for kb in data["knowledge_bases"]],
        }
        if data.get("agent_id"):
            values["agent_id"] = data["agent_id"]
        return values


def _agent_initial(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "description": agent.description,
        "instructions": agent.instructions,
        "model_config": agent.model_config_id,
        "tools": list(agent.tools),
        "knowledge_bases": [kb.pk for kb in agent.knowledge_bases.all()],
        "is_active": agent.is_active,
    }


class ModelConfigForm(ServiceErrorsMixin, forms.ModelForm[ModelConfig]):
    """Which LLM agents talk to; a key is named by its environment variable, never stored."""

    class Meta:
        model = ModelConfig
        fields = (
            "name",
            "provider",
            "model_id",
            "base_url",
            "api_key_env",
            "temperature",
            "max_tokens",
        )

    def service_data(self) -> dict[str, Any]:
        """The cleaned data in the shape `model_config_save` takes."""
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


class KnowledgeBaseForm(ServiceErrorsMixin, forms.ModelForm[KnowledgeBase]):
    """Name a new knowledge base and choose how its documents are chunked."""

    class Meta:
        model = KnowledgeBase
        fields = ("name", "description", "chunk_size", "chunk_overlap")
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def service_data(self) -> dict[str, Any]:
        """The cleaned data in the shape `knowledge_base_save` takes."""
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


class DocumentForm(forms.Form):
    """A file to upload, or text to paste, or a web address to fetch: exactly one."""

    file = forms.FileField(required=False)
    text = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 4}))
    url = forms.URLField(required=False, label="Web address", assume_scheme="https")
    title = forms.CharField(required=False, max_length=255)

    def clean(self) -> dict[str, Any]:
        """Exactly one source must be given."""
        cleaned = super().clean() or {}
        given = [name for name in ("file", "text", "url") if cleaned.get(name)]
        if len(given) != 1:
            raise ValidationError("Choose a file, paste some text or give a web address (one).")
        return cleaned

    def source(self) -> dict[str, Any]:
        """The keyword arguments of `document_create` for the source given."""
        data = self.cleaned_data
        if data.get("file"):
            return {"upload": data["file"], "title": data["title"] or None}
        if data.get("text"):
            return {"text": data["text"], "title": data["title"] or None}
        return {"url": data["url"], "title": data["title"] or None}


class ChatForm(forms.Form):
    """One message to an agent, in a session or starting one."""

    message = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Write a message first."},
    )
    session_id = forms.CharField(required=False, max_length=64)

    def clean_message(self) -> str:
        """A message must have some text and fit the server's limit."""
        message: str = self.cleaned_data["message"]
        if not message.strip():
            raise ValidationError("Write a message first.")
        limit = settings.AGENTOS_MAX_MESSAGE_CHARS
        if len(message) > limit:
            raise ValidationError(f"The message is longer than {limit:,} characters.")
        return message


class RenameForm(forms.Form):
    """A new title for a session."""

    title = forms.CharField(max_length=200)

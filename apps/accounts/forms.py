from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone


class TokenCreateForm(forms.Form):
    """Name a new API token and, optionally, when it expires."""

    name = forms.CharField(max_length=100)
    expires_in_days = forms.IntegerField(
        min_value=1, max_value=3650, required=False, help_text="Leave empty for no expiry."
    )

    def expires_at(self) -> datetime | None:
        """The expiry chosen, as a datetime."""
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None

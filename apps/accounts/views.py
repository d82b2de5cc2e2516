from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts.audit import client_ip
from apps.accounts.forms import TokenCreateForm
from apps.accounts.models import APIToken, User
from apps.accounts.tokens import token_create, token_revoke


class AuthedRequest(HttpRequest):
    user: User


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: AuthedRequest) -> HttpResponse:
    """List the user's tokens and create one; a new token is shown once, on this response."""
    form = TokenCreateForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = token_create(
            user=request.user,
            name=form.cleaned_data["name"],
            expires_at=form.expires_at(),
            actor=request.user,
            ip=client_ip(request),
        )
        form = TokenCreateForm()
    context = {
        "form": form,
        "new_token": new_token,
        "tokens": APIToken.objects.filter(user=request.user),
    }
    return render(request, "accounts/tokens.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def token_revoke_view(request: AuthedRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's tokens."""
    try:
        token = token_revoke(
            user=request.user, token_id=token_id, actor=request.user, ip=client_ip(request)
        )
    except APIToken.DoesNotExist:
        raise Http404("No such token.") from None
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("tokens")

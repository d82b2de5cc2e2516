from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import APIToken, User, hash_token
from apps.accounts.tokens import token_create

WHOAMI = "/api/v1/auth/whoami/"


def get_with(header: str | None) -> tuple[int, dict[str, object]]:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(WHOAMI)
    return response.status_code, response.json()


def test_it_accepts_the_bearer_form(user: User, token: str) -> None:
    assert get_with(f"Bearer {token}") == (200, {"id": user.pk, "email": user.email})


def test_it_accepts_the_token_form(user: User, token: str) -> None:
    assert get_with(f"Token {token}") == (200, {"id": user.pk, "email": user.email})


def test_it_rejects_a_wrong_token(token: str) -> None:
    status, body = get_with(f"Bearer {token}x")
    assert status == 401
    assert "Invalid" in str(body)


def test_it_rejects_a_revoked_token(user: User, token: str) -> None:
    APIToken.objects.filter(user=user).update(revoked_at=timezone.now())
    assert get_with(f"Bearer {token}")[0] == 401


def test_it_rejects_an_expired_token(user: User) -> None:
    _, raw = token_create(user=user, name="old", expires_at=timezone.now() - timedelta(seconds=1))
    assert get_with(f"Bearer {raw}")[0] == 401


def test_it_accepts_a_token_before_its_expiry(user: User) -> None:
    _, raw = token_create(user=user, name="soon", expires_at=timezone.now() + timedelta(hours=1))
    assert get_with(f"Bearer {raw}")[0] == 200


def test_it_rejects_a_token_of_an_inactive_user(user: User, token: str) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert get_with(f"Bearer {token}")[0] == 401


def test_it_answers_401_with_a_challenge_when_the_header_is_missing(db: None) -> None:
    response = APIClient().get(WHOAMI)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer", "Basic abc", "Bearer a b", "opie_abc"])
def test_it_rejects_malformed_headers(token: str, header: str) -> None:
    assert get_with(header)[0] == 401


def test_it_stores_only_the_hash(user: User) -> None:
    token, raw = token_create(user=user, name="hashed")
    stored = APIToken.objects.filter(pk=token.pk).values().get()
    assert raw not in {str(value) for value in stored.values()}
    assert stored["key_hash"] == hash_token(raw)
    assert raw.startswith(stored["prefix"])


def test_it_records_last_use(user: User, token: str) -> None:
    assert APIToken.objects.get(user=user).last_used_at is None
    get_with(f"Bearer {token}")
    assert APIToken.objects.get(user=user).last_used_at is not None


def test_the_command_prints_a_working_token(user: User, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("create_api_token", "--user", "ALICE@example.com", "--name", "cli")
    raw = capsys.readouterr().out.strip()
    assert get_with(f"Bearer {raw}")[0] == 200
    assert APIToken.objects.get(user=user).name == "cli"


def test_the_command_rejects_an_unknown_user(db: None) -> None:
    with pytest.raises(CommandError, match="No user"):
        call_command("create_api_token", "--user", "nobody@example.com", "--name", "x")


def test_the_token_page_shows_a_new_token_once(web: Client, user: User) -> None:
    response = web.post("/account/tokens/", {"name": "laptop", "expires_in_days": "30"})
    assert response.status_code == 200
    raw = response.context["new_token"]
    assert raw in response.content.decode()
    assert get_with(f"Bearer {raw}")[0] == 200
    listing = web.get("/account/tokens/").content.decode()
    assert "laptop" in listing
    assert raw not in listing


def test_the_token_page_reports_field_errors(web: Client) -> None:
    response = web.post("/account/tokens/", {"name": "", "expires_in_days": "-3"})
    assert response.status_code == 400
    assert response.context["form"].errors.keys() == {"name", "expires_in_days"}
    assert not APIToken.objects.exists()


def test_the_token_page_revokes(web: Client, user: User, token: str) -> None:
    pk = APIToken.objects.get(user=user).pk
    response = web.post(f"/account/tokens/{pk}/revoke/", follow=True)
    assert "revoked" in response.content.decode()
    assert get_with(f"Bearer {token}")[0] == 401


def test_another_user_cannot_revoke_a_token(user: User, other_user: User, token: str) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    pk = APIToken.objects.get(user=user).pk
    assert intruder.post(f"/account/tokens/{pk}/revoke/").status_code == 404
    assert get_with(f"Bearer {token}")[0] == 200


def test_the_token_page_needs_login(db: None) -> None:
    response = Client().get("/account/tokens/")
    assert response.status_code == 302
    assert response["Location"].startswith("/account/login/")


def test_the_token_page_is_csrf_protected(user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post("/account/tokens/", {"name": "x"}).status_code == 403


def test_people_log_in_with_their_email(user: User) -> None:
    client = Client()
    response = client.post(
        "/account/login/", {"username": "Alice@Example.com", "password": "pw-for-tests-1"}
    )
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_a_wrong_password_shows_an_error(user: User) -> None:
    response = Client().post("/account/login/", {"username": user.email, "password": "nope"})
    assert response.status_code == 200
    assert "correct email" in response.content.decode()

"""Model config pages: list, create and edit with field errors, delete only when unused."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.opie.models import ModelConfig
from tests import factories

PAGE = "/agentos/models/"

pytestmark = pytest.mark.django_db


def config_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "gpt",
        "provider": "openai",
        "model_id": "gpt-4o-mini",
        "base_url": "",
        "api_key_env": "OPENAI_API_KEY",
        "temperature": "0.2",
        "max_tokens": "",
    }
    data.update(overrides)
    return data


def test_it_lists_only_the_users_configs_with_their_agents(
    web: Client, user: User, other_user: User
) -> None:
    mine = factories.model_config(user, name="my-fast-model", provider="openai", model_id="x")
    factories.agent(user, model_config=mine)
    factories.model_config(other_user, name="someone-elses-model")

    page = web.get(PAGE).content.decode()

    assert "my-fast-model" in page
    assert "used by 1 agent" in page
    assert "someone-elses-model" not in page


def test_it_creates_a_config_for_the_user(web: Client, user: User) -> None:
    response = web.post(PAGE, config_data())

    assert response.status_code == 302
    config = ModelConfig.objects.get(name="gpt")
    assert config.owner == user
    assert (config.provider, config.model_id, config.temperature) == ("openai", "gpt-4o-mini", 0.2)
    assert "Model config “gpt” saved." in web.get(PAGE).content.decode()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"provider": "openai_compatible", "model_id": ""}, "needs a base URL"),
        ({"model_id": ""}, "Name the OpenAI model to use"),
        ({"api_key_env": "sk-live-123"}, "environment"),
        ({"temperature": "3"}, "less than or equal to 2"),
    ],
)
def test_it_shows_field_errors_and_saves_nothing(
    web: Client, overrides: dict[str, Any], message: str
) -> None:
    response = web.post(PAGE, config_data(**overrides))

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ModelConfig.objects.exists()


def test_it_refuses_a_second_config_of_the_same_name(web: Client, user: User) -> None:
    factories.model_config(user, name="gpt", provider="openai", model_id="x")

    response = web.post(PAGE, config_data())

    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert ModelConfig.objects.filter(owner=user).count() == 1


def test_it_edits_a_config(web: Client, user: User) -> None:
    config = factories.model_config(user, name="gpt", provider="openai", model_id="old")

    response = web.post(f"{PAGE}{config.pk}/edit/", config_data(model_id="new"))

    assert response.status_code == 302
    config.refresh_from_db()
    assert config.model_id == "new"


def test_another_users_config_is_not_found_and_unchanged(web: Client, other_user: User) -> None:
    theirs = factories.model_config(other_user, name="theirs", provider="openai", model_id="x")

    assert web.get(f"{PAGE}{theirs.pk}/edit/").status_code == 404
    assert web.post(f"{PAGE}{theirs.pk}/edit/", config_data()).status_code == 404
    assert web.post(f"{PAGE}{theirs.pk}/delete/").status_code == 404
    theirs.refresh_from_db()
    assert (theirs.name, theirs.model_id) == ("theirs", "x")


def test_it_deletes_only_an_unused_config(web: Client, user: User) -> None:
    used = factories.model_config(user, name="used", provider="openai", model_id="x")
    factories.agent(user, model_config=used)
    unused = factories.model_config(user, name="unused", provider="openai", model_id="x")

    web.post(f"{PAGE}{used.pk}/delete/")
    refused = web.get(PAGE).content.decode()
    web.post(f"{PAGE}{unused.pk}/delete/")

    assert "is used by agents" in refused
    assert list(ModelConfig.objects.values_list("name", flat=True)) == ["used"]


def test_the_pages_require_a_login(client: Client) -> None:
    response = client.get(PAGE)

    assert response.status_code == 302
    assert "/login" in response["Location"]

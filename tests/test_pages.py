from __future__ import annotations

from django.test import Client, override_settings

from apps.accounts.models import User
from tests import factories


def test_the_dashboard_lists_the_users_agents_and_sessions(
    web: Client, user: User, other_user: User
) -> None:
    mine = factories.agent(user, name="Helpful <b>one</b>", tools=["calculator"])
    factories.session(user, mine, title="Trip planning")
    factories.agent(other_user, name="Secret agent")
    page = web.get("/agentos/").content.decode()
    assert "Helpful &lt;b&gt;one&lt;/b&gt;" in page
    assert "Trip planning" in page
    assert "calculator" in page
    assert "Secret agent" not in page


def test_the_dashboard_needs_login(db: None) -> None:
    response = Client().get("/agentos/")
    assert response.status_code == 302
    assert response["Location"] == "/account/login/?next=/agentos/"


def test_the_dashboard_says_when_agents_are_disabled(web: Client) -> None:
    with override_settings(AGENTOS_ENABLED=False):
        page = web.get("/agentos/").content.decode()
    assert "Agents are unavailable" in page


def test_logging_in_lands_on_the_dashboard(user: User) -> None:
    client = Client()
    response = client.post(
        "/account/login/", {"username": user.email, "password": "pw-for-tests-1"}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/agentos/"
    assert "Dashboard" in response.content.decode()

from __future__ import annotations

import re
from datetime import date, timedelta

from django.test import Client, override_settings
from django.utils import timezone

from apps.accounts.models import User
from apps.opie.models import RunRecord
from apps.opie.web.charts import tokens_chart
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


def test_the_dashboard_links_each_agent_to_its_chat_and_sessions_to_their_page(
    web: Client, user: User
) -> None:
    agent = factories.agent(user, agent_id="agent-quick")
    session = factories.session(user, agent, title="Trip planning")
    page = web.get("/agentos/").content.decode()
    assert 'href="/agentos/chat/agent-quick/"' in page
    assert f'href="/agentos/session/{session.session_id}/"' in page


def test_the_dashboard_draws_tokens_per_day(web: Client, user: User) -> None:
    agent = factories.agent(user)
    today = timezone.now()
    for number, (when, tokens) in enumerate(
        [(today, 300), (today, 100), (today - timedelta(days=2), 200)]
    ):
        record = RunRecord.objects.create(
            run_id=f"run-{number}", user=user, agent=agent, status="succeeded", total_tokens=tokens
        )
        RunRecord.objects.filter(pk=record.pk).update(created_at=when)
    page = web.get("/agentos/").content.decode()
    bars = re.findall(r"<title>(\w+ \d+): (\d+) tokens in (\d+) runs?</title>", page)
    assert len(bars) == 14
    assert bars[-1][1:] == ("400", "2")
    assert bars[-3][1:] == ("200", "1")
    assert "600 tokens" in page
    heights = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', page)
    assert float(heights[-1]) == 2 * float(heights[-3])


def test_the_dashboard_says_when_no_tokens_were_used(web: Client) -> None:
    page = web.get("/agentos/").content.decode()
    assert "No tokens used yet." in page
    assert "<svg" not in page


def test_the_chart_scales_bars_to_the_busiest_day() -> None:
    days = [
        {"day": date(2026, 1, d), "tokens": t, "runs": 1} for d, t in [(1, 0), (2, 5), (3, 1000)]
    ]
    chart = tokens_chart(days)
    assert [bar.height for bar in chart.bars] == [0.0, 2.0, chart.plot_height]
    assert chart.peak == 1000
    assert chart.total == 1005

"""URLs of the REST API, mounted at /api/v1/agentos/."""

from __future__ import annotations

from django.urls import path, re_path, register_converter

from apps.opie.api import knowledge, reports, resources, views
from apps.opie.api.converters import PkConverter, PublicIdConverter
from apps.opie.api.errors import endpoint_not_found

register_converter(PublicIdConverter, "api_public_id")
register_converter(PkConverter, "api_pk")

app_name = "agentos-api"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    path("info/", views.InfoView.as_view(), name="info"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("agents/", views.AgentListView.as_view(), name="agents"),
    path("agents/<api_public_id:agent_id>/", resources.AgentDetailView.as_view(), name="agent"),
    path("tools/", resources.ToolListView.as_view(), name="tools"),
    path("send-message/", views.SendMessageView.as_view(), name="send-message"),
    path(
        "send-message/stream/",
        views.SendMessageStreamView.as_view(),
        name="send-message-stream",
    ),
    path("create-session/", views.CreateSessionView.as_view(), name="create-session"),
    path("sessions/", views.SessionListView.as_view(), name="sessions"),
    path("sessions/<api_public_id:session_id>/", views.SessionDetailView.as_view(), name="session"),
    path(
        "sessions/<api_public_id:session_id>/export/",
        reports.SessionExportView.as_view(),
        name="session-export",
    ),
    path("runs/<api_public_id:run_id>/cancel/", views.RunCancelView.as_view(), name="run-cancel"),
    path("usage/", reports.UsageView.as_view(), name="usage"),
    path("process-message/", views.ProcessMessageView.as_view(), name="process-message"),
    path("model-configs/", resources.ModelConfigListView.as_view(), name="model-configs"),
    path(
        "model-configs/<api_pk:pk>/", resources.ModelConfigDetailView.as_view(), name="model-config"
    ),
    path("knowledge-bases/", knowledge.KnowledgeBaseListView.as_view(), name="knowledge-bases"),
    path(
        "knowledge-bases/<api_pk:pk>/",
        knowledge.KnowledgeBaseDetailView.as_view(),
        name="knowledge-base",
    ),
    path(
        "knowledge-bases/<api_pk:pk>/documents/",
        knowledge.DocumentListView.as_view(),
        name="documents",
    ),
    path(
        "knowledge-bases/<api_pk:pk>/search/",
        knowledge.KnowledgeSearchView.as_view(),
        name="knowledge-search",
    ),
    path("documents/<api_pk:pk>/", knowledge.DocumentDetailView.as_view(), name="document"),
    # Anything else under the API is a JSON 404, not Django's HTML page.
    re_path(r"^(?P<path>.*)$", endpoint_not_found),
]

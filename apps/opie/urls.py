"""The web pages, mounted at /agentos/ (the spec's URLs first)."""

from django.urls import path

from apps.opie.agentos import views

app_name = "opie"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("agents/", views.agent_list, name="agents"),
    path("chat/<str:agent_id>/", views.chat, name="chat"),
    path("session/<str:session_id>/", views.session_detail, name="session"),
    path("agents/new/", views.agent_create, name="agent-create"),
    path("agents/<str:agent_id>/edit/", views.agent_edit, name="agent-edit"),
    path("agents/<str:agent_id>/delete/", views.agent_delete, name="agent-delete"),
    path("chat/<str:agent_id>/send/", views.chat_send, name="chat-send"),
    path("chat/<str:agent_id>/stream/<str:token>/", views.chat_stream, name="chat-stream"),
    path("runs/<str:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("session/<str:session_id>/rename/", views.session_rename, name="session-rename"),
    path("session/<str:session_id>/delete/", views.session_delete, name="session-delete"),
    path("session/<str:session_id>/export.<str:fmt>", views.session_export, name="session-export"),
    path("models/", views.model_config_list, name="model-configs"),
    path("models/<int:config_id>/edit/", views.model_config_edit, name="model-config-edit"),
    path("models/<int:config_id>/delete/", views.model_config_delete, name="model-config-delete"),
    path("knowledge/", views.knowledge_list, name="knowledge"),
    path("knowledge/<int:kb_id>/", views.knowledge_detail, name="knowledge-base"),
    path("knowledge/<int:kb_id>/upload/", views.document_upload, name="document-upload"),
    path("knowledge/<int:kb_id>/delete/", views.knowledge_delete, name="knowledge-delete"),
    path("documents/<int:document_id>/", views.document_status, name="document"),
    path("documents/<int:document_id>/delete/", views.document_remove, name="document-delete"),
]

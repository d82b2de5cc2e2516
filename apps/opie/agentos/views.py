"""The spec's import location of the web views; they live in `apps.opie.web`.

The REST views are in `apps.opie.api`. Views are thin: parse, call AgentOSService (or a
service or selector), render.
"""

from apps.opie.web.agents import agent_create, agent_delete, agent_edit, agent_list
from apps.opie.web.chat import chat, chat_send, chat_stream, run_cancel
from apps.opie.web.dashboard import dashboard
from apps.opie.web.knowledge import (
    document_remove,
    document_status,
    document_upload,
    knowledge_delete,
    knowledge_detail,
    knowledge_list,
)
from apps.opie.web.model_configs import (
    model_config_delete,
    model_config_edit,
    model_config_list,
)
from apps.opie.web.sessions import session_delete, session_detail, session_export, session_rename

__all__ = [
    "agent_create",
    "agent_delete",
    "agent_edit",
    "agent_list",
    "chat",
    "chat_send",
    "chat_stream",
    "dashboard",
    "document_remove",
    "document_status",
    "document_upload",
    "knowledge_delete",
    "knowledge_detail",
    "knowledge_list",
    "model_config_delete",
    "model_config_edit",
    "model_config_list",
    "run_cancel",
    "session_delete",
    "session_detail",
    "session_export",
    "session_rename",
]

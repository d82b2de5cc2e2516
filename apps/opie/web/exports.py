"""A session's transcript as a Markdown document, tool steps and sources included."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def session_markdown(session: Mapping[str, Any]) -> str:
    """The transcript of a session (as `AgentOSService.get_session` returns it) in Markdown."""
    lines = [
        f"# {session.get('title') or 'Untitled session'}",
        "",
        f"- Agent: {session['agent_name']} (`{session['agent_id']}`)",
        f"- Session: `{session['session_id']}`",
        f"- Started: {session['created_at']}",
        "",
    ]
    for message in session.get("messages", []):
        when = message.get("created_at")
        stamp = f" · {datetime.fromtimestamp(when, UTC).isoformat()}" if when else ""
        lines += [f"## {message['role'].capitalize()}{stamp}", ""]
        for call in message.get("tool_calls") or []:
            arguments = json.dumps(call.get("arguments") or {}, ensure_ascii=False)
            lines.append(f"> Tool `{call.get('name')}` {arguments} -> {call.get('result')}")
        if message.get("tool_calls"):
            lines.append("")
        lines += [message.get("content") or "", ""]
        titles = dict.fromkeys(ref.get("title") for ref in message.get("references") or [])
        if titles:
            lines += ["Sources: " + "; ".join(str(title) for title in titles), ""]
    return "\n".join(lines).rstrip() + "\n"

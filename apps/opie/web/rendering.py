"""Agent output as safe HTML: Markdown with raw HTML shown as text, then sanitised.

Agent answers and document text are untrusted: a model can be talked into writing
`<script>`, and a document can carry anything. Raw HTML in Markdown is therefore escaped
(shown as text) rather than passed through, and the result is cleaned with nh3 against a
short allow-list as a second line of defence. Images are not allowed: a Markdown image
pointing elsewhere would leak the conversation through its URL as soon as it is shown.
"""

from __future__ import annotations

import json
from typing import Any

import markdown
import nh3
from django.utils.html import escape, linebreaks
from django.utils.safestring import SafeString, mark_safe
from markdown.extensions import Extension

ALLOWED_TAGS = {
    *("p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote"),
    *("ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6"),
    *("table", "thead", "tbody", "tr", "th", "td"),
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}}
URL_SCHEMES = {"http", "https", "mailto"}
# Tool results can be whole search results: the page shows their start, the export all.
TOOL_RESULT_CHARS = 2000
CITATION_CHARS = 400


class _EscapeRawHtml(Extension):
    """Treat raw HTML in Markdown as text, so it is escaped instead of rendered."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:
        """Drop the block and inline HTML handlers."""
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")


def render_markdown(text: str) -> SafeString:
    """Markdown as sanitised HTML that cannot run script."""
    converter = markdown.Markdown(
        extensions=[_EscapeRawHtml(), "fenced_code", "tables", "sane_lists"]
    )
    html = nh3.clean(
        converter.convert(text or ""),
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(html)  # noqa: S308 - escaped by Markdown, then cleaned by nh3


def render_text(text: str) -> SafeString:
    """Plain text (what a person typed) as escaped paragraphs."""
    return mark_safe(linebreaks(escape(text or "")))  # noqa: S308 - escaped just above


def present_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call with its arguments and result as display strings."""
    result = call.get("result")
    shown = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    shown = shown or ""
    return {
        "name": call.get("name") or "tool",
        "arguments": json.dumps(call.get("arguments") or {}, ensure_ascii=False, indent=2),
        "result": shown[:TOOL_RESULT_CHARS],
        "truncated": len(shown) > TOOL_RESULT_CHARS,
        "error": bool(call.get("error")),
    }


def present_references(references: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Citations, one per document, best passage first."""
    seen: set[Any] = set()
    citations = []
    for reference in sorted(references, key=lambda ref: -float(ref.get("score") or 0)):
        key = reference.get("document_id")
        if key in seen:
            continue
        seen.add(key)
        chunk = str(reference.get("chunk") or "")
        citations.append(
            {
                "title": str(reference.get("title") or "Untitled document"),
                "document_id": key,
                "knowledge_base_id": reference.get("knowledge_base_id"),
                "url": str(reference.get("url") or ""),
                "excerpt": chunk[:CITATION_CHARS] + ("…" if len(chunk) > CITATION_CHARS else ""),
                "score": reference.get("score"),
            }
        )
    return citations


def present_message(message: dict[str, Any]) -> dict[str, Any]:
    """A transcript message ready for the template: HTML body, tool steps, citations."""
    assistant = message.get("role") == "assistant"
    content = str(message.get("content") or "")
    return {
        **message,
        "html": render_markdown(content) if assistant else render_text(content),
        "steps": [present_tool_call(call) for call in message.get("tool_calls") or []],
        "citations": present_references(message.get("references") or []),
    }


def sse_frame(event: str, html: str = "") -> str:
    """One Server-Sent Events frame carrying an HTML fragment for htmx to swap in."""
    # CR is a line break in SSE too: normalise so no line escapes its `data:` prefix.
    lines = html.replace("\r\n", "\n").replace("\r", "\n").split("\n") if html else [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"

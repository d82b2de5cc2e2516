"""The server-rendered web pages of the agent product (templates, htmx and SSE)."""

"""The REST API under /api/v1/agentos/: thin DRF views over AgentOSService and the selectors."""

"""REST routers under /api/v1 (and the health and metrics endpoints)."""

API_PREFIX = "/api/v1"

"""The HTTP layer: REST API under `/api/v1` (and the web pages), with auth and tenancy.

`create_app(settings)` builds the FastAPI app; nothing connects until its lifespan starts.
"""

from dashboards.app import create_app

__all__ = ["create_app"]

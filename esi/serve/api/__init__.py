"""The ESI HTTP API and search page: routes (app.py) with response models (schemas.py), the backend composing
the services (backend.py, services.py), upload parsing (uploads.py) and load limits (limits.py)."""

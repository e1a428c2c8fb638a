"""The REST API: the canonical `/api/` routes and the seed system's routes."""

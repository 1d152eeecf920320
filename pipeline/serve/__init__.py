"""`mvbind serve`: the web page and JSON API over a `Recommender` (needs the serve extra: fastapi, uvicorn)."""

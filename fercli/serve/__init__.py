"""`fer serve`: the recognizer behind an HTTP API (FastAPI + uvicorn) and a web page.

config.py holds the one frozen ServeConfig, batching.py the micro-batcher that classifies
the faces of requests arriving together in one forward pass, app.py the FastAPI app and the
request limits, auth.py the API keys and the cap on requests in flight in front of it,
static/ the page served at `/` (no outside assets). metrics.py holds the Prometheus metrics
of /metrics, ops.py readiness, the access log and the middleware that counts and drains,
lifecycle.py the uvicorn server that drains on SIGTERM and SIGINT. Nothing here imports
Typer or Rich.
"""

"""The ingest channel between wrapper and control plane (WebSocket)."""

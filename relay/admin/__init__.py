"""The relay's HTTP side: /metrics, /healthz and /readyz (the admin page comes later)."""

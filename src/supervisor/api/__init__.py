"""The HTTP API: one Quart-Trio app per port (inference, management, metrics)."""

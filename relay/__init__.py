"""Rules on new data (event time) -> alerts -> outbox -> signed deliveries (webhook, MQTT, SSE, e-mail)."""

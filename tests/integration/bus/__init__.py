"""desk.bus consumption patterns against a real nats-server."""

"""MQTT side of the relay: topics, the paho bridge, its counters and status route."""

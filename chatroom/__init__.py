"""The chat room and its web transports (Socket.IO, HTTP). Knows nothing of MQTT."""

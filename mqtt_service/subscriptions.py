"""The inbound filters a persistent session still holds from another configuration.

The bridge's session is persistent (clean_session=False): its subscriptions live on the
broker across restarts. An instance moved to a cluster (MQTT_SHARED_GROUP) under the same
client id kept its plain `P/messages/in` subscription beside the new `$share/<group>/…`
one, so it received every device message twice (its share, and all of them); a move back,
or to MQTT_DEVICE_TOPICS_ONLY, leaves the same kind of stale filters. On every connect the
bridge unsubscribes what it no longer wants: every inbound filter of the other modes it
can name (the plain ones, its group's), and what this client id subscribed last time,
remembered in a small file beside the history database (a `$share` group name cannot be
guessed).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mqtt_service.topics import Topics

log = logging.getLogger("mqtt_service.bridge")

FILE_NAME = "mqtt-subscriptions.json"


class SubscriptionMemory:
    def __init__(self, directory: str):
        self.path = Path(directory) / FILE_NAME
        self._warned = False

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def previous(self, client_id: str) -> list[str]:
        filters = self._load().get(client_id, [])
        return [f for f in filters if isinstance(f, str)] if isinstance(filters, list) else []

    def remember(self, client_id: str, filters: list[str]) -> None:
        data = self._load()
        if data.get(client_id) == filters:
            return
        data[client_id] = filters
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(temporary, self.path)  # never half a file
        except OSError as exc:
            if not self._warned:  # one line: the move between modes then needs a clean session by hand
                self._warned = True
                log.warning("cannot remember the bridge's subscriptions in %s: %s", self.path, exc)


def stale_filters(topics: Topics, wanted: list[str], group: str, previous: list[str]) -> list[str]:
    """Inbound filters the session may still hold that `wanted` does not include."""
    candidates = topics.subscriptions("") + [f"$share/{group}/{f}" for f in topics.subscriptions("")
                                             if group] + previous
    return [f for f in dict.fromkeys(candidates) if f not in wanted]

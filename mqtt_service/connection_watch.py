"""Connections the broker keeps closing right after they open, and why.

MQTT 3.1.1 gives no reason. Two causes make this pattern: a second client with our
client id (the broker closes the older session each time one of the two reconnects),
or a publication the broker refuses and answers by closing the connection (mosquitto
does so for some ACL denials), sent again after every connect. An optional topic family
(device topics, Home Assistant discovery) published just before two such closes in a
row is refused from then on: dropped and counted, never a reconnect loop (PROTOCOL 3, 9).
"""
from __future__ import annotations

import logging
import time

from mqtt_service.stats import BridgeStats

log = logging.getLogger("mqtt_service.bridge")

# A session closed by the broker within TAKEOVER_SECONDS of opening, TAKEOVER_COUNT
# times within TAKEOVER_WINDOW seconds: another client takes our client id, or the broker
# refuses our publications.
TAKEOVER_SECONDS, TAKEOVER_COUNT, TAKEOVER_WINDOW = 10.0, 3, 60.0
# An optional publication followed within this many seconds by the broker closing the
# connection, twice in a row, is taken as refused.
REFUSAL_SECONDS = 0.5
# A connection lost within this many seconds of opening, for the same reason as the one
# before it (also that short): a broker that closes each connection as it opens (NATS and
# a QoS 2 publication, a refused ACL, a take-over). One state, said once, not per retry.
FLAP_SECONDS = 3.0


class ConnectionWatch:
    def __init__(self, stats: BridgeStats, client_id: str, optional_families: tuple[str, ...]):
        self.stats = stats
        self.client_id = client_id
        # Families of optional publications a broker may refuse by closing the connection.
        self.optional_families = optional_families
        self.refused_families: set[str] = set()
        self._optional_sent: dict[str, float] = {}  # family -> when one was last handed to paho
        self._suspects: set[str] = set()
        self._connected_at = 0.0
        self._short_sessions: list[float] = []  # when connections closed right after opening
        self._takeover_logged = float("-inf")
        self._short_loss: str | None = None  # why the last connection, a short one, was lost

    def family(self, topic: str) -> str:
        """The topic family a refusal is blamed on: optional families as a whole, else the topic."""
        return next((family for family in self.optional_families if topic.startswith(family)), topic)

    def refused(self, topic: str) -> bool:
        return bool(self.refused_families) and self.family(topic) in self.refused_families

    def sent(self, topic: str) -> None:
        """A publication was handed to paho (called for every one: keep it cheap)."""
        for family in self.optional_families:
            if topic.startswith(family):
                self._optional_sent[family] = time.monotonic()
                return

    def opened(self) -> None:
        self._connected_at = time.monotonic()

    def lost(self, why: str) -> bool:
        """A connection we had is gone (before `closed`): is it news for the log and the rooms?
        Not when it is the same loss as the one before, both right after connecting."""
        short = time.monotonic() - self._connected_at < FLAP_SECONDS
        repeated = short and self._short_loss == why
        self._short_loss = why if short else None
        return not repeated

    def closed(self) -> None:
        """The broker closed a connection we had: say so when it keeps happening."""
        now = time.monotonic()
        if now - self._connected_at > TAKEOVER_SECONDS:
            return
        # A refusal closes the connection at once; a take-over comes when the other client
        # reconnects, a second or more later.
        suspects = {family for family, sent in self._optional_sent.items()
                    if self._connected_at <= sent and now - sent < REFUSAL_SECONDS}
        repeated = suspects & self._suspects
        self._suspects = suspects
        for suspect in repeated - self.refused_families:
            self.refused_families.add(suspect)
            text = (f"the broker closed the connection right after publications to {suspect!r}… twice "
                    "(its ACL probably refuses them): those publications are dropped from now on "
                    "(allow them for the bridge's user, see clients/mosquitto/acl.example)")
            self.stats.error(text)
            log.error("MQTT %s", text)
        if repeated:
            return
        self._short_sessions = [t for t in self._short_sessions if now - t < TAKEOVER_WINDOW] + [now]
        if len(self._short_sessions) < TAKEOVER_COUNT:
            return
        text = (f"the broker closed {len(self._short_sessions)} connections within "
                f"{TAKEOVER_WINDOW:g} s right after they opened: another client probably uses "
                f"MQTT_CLIENT_ID {self.client_id!r} (give each server its own), or the "
                "broker refuses some of the bridge's publications (check its ACL)")
        self.stats.error(text)
        if now - self._takeover_logged > TAKEOVER_WINDOW:
            self._takeover_logged = now
            log.error("MQTT %s", text)

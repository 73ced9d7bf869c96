"""The AI assistant: a room listener that answers mentions, streaming its reply.

It decides *when* to answer (AI_REPLY_MODE), builds the context from the room's
history, and streams deltas into the room while the backend writes; the final
reply is posted as one `ai_response` message. Requests run on worker threads
(at most 2 at once, one per sender), never on the MQTT or Socket.IO thread.
The backend (what talks to the model) is injected: `OpenAIBackend`
(chatroom/assistant/openai_backend.py) in the app, anything with the same `stream()` in tests.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from chatroom.assistant import device_tools
from chatroom.assistant.openai_backend import AssistantError, ChatBackend, ToolCall
from chatroom.config import Settings
from chatroom.core.command_desk import CommandDesk
from chatroom.core.model import AI_RESPONSE, Message, Source
from chatroom.core.room import Rooms
from chatroom.core.room_types import AssistantDelta

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2
DEFAULT_SYSTEM_PROMPT = (
    "You are {name}, the assistant of a chat room shared by people, scripts and IoT devices "
    "(their sensor readings appear as data). Answer briefly and plainly."
)


@dataclass
class AssistantStats:
    requests: int = 0
    failures: int = 0
    refused: int = 0      # mentions turned away by the queue bound or the per-minute budget
    waiting: int = 0      # accepted, waiting for one of the MAX_IN_FLIGHT slots
    in_flight: int = 0
    total_latency: float = 0.0
    answered: int = 0

    @property
    def average_latency_ms(self) -> float | None:
        return round(1000 * self.total_latency / self.answered, 1) if self.answered else None


class Assistant:
    """Room listener; call `__call__(event)` for every room event."""

    # /metrics: chatroom_assistant_<name> for each number of status().
    METRICS = {
        "requests": ("counter", "Assistant requests started"),
        "failures": ("counter", "Assistant requests that ended in ai_error"),
        "refused": ("counter", "Mentions turned away by the assistant's queue bound or per-minute budget"),
        "waiting": ("gauge", "Assistant requests waiting for a slot"),
        "in_flight": ("gauge", "Assistant requests running now"),
        "average_latency_ms": ("gauge", "Average time to a complete answer, ms"),
    }

    def __init__(self, settings: Settings, rooms: Rooms, backend: ChatBackend | None,
                 desk: CommandDesk | None = None):
        """`desk`: the room's devices' declared commands, which the assistant may send when
        asked (assistant/device_tools.py)."""
        self.settings = settings
        self.desk = desk
        self.rooms = rooms
        self.backend = backend
        self.name = settings.ai_name
        self.mode = settings.ai_reply_mode
        self.stats = AssistantStats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._busy_senders: set[tuple] = set()
        # PROTOCOL 9: whatever the number of senders, at most MAX_IN_FLIGHT + ai_queue_size
        # requests are pending and at most ai_requests_per_minute start in any minute.
        self._started: deque[float] = deque()
        self.clock = time.monotonic
        self._mention = re.compile(rf"^\s*(?:@{re.escape(self.name)}|/ai)(?![\w-])[\s,:]*", re.IGNORECASE)

    @property
    def enabled(self) -> bool:
        return self.backend is not None and self.mode != "off"

    # --- deciding -----------------------------------------------------------------

    def wants(self, message: Message) -> bool:
        """Is this a message the assistant should answer?"""
        if message.type != "user_message" or message.source == Source.AI:
            return False  # never answer itself
        if self.mode == "all":
            return True
        if self.mode == "mention":
            return bool(self._mention.match(message.content))
        return False

    def may_act(self, message: Message) -> bool:
        """Whether the device tool is offered for this message: only a person on the page
        (Source.WEB) who mentioned the assistant. Never a device's or script's post (anyone
        who may publish would command every device through it), never AI_REPLY_MODE=all
        (nobody asked the assistant anything)."""
        return (self.desk is not None and self.mode == "mention" and message.source == Source.WEB
                and bool(self._mention.match(message.content)))

    def __call__(self, event) -> None:
        if not isinstance(event, Message) or not self.wants(event):
            return
        if self.backend is None:
            self.rooms.announce(event.room, "ai_error",
                                f"The assistant is not configured (no OPENAI_API_KEY), so {event.username} "
                                "gets no answer.", self.name)
            return
        sender = (event.source, event.client_id or event.username)
        with self._lock:
            if sender in self._busy_senders:
                notice = f"{event.username}, {self.name} is still answering your previous question."
                self.rooms.announce(event.room, "ai_busy", notice, self.name)
                return
            refusal = self._over_limits()
            if refusal:
                self.stats.refused += 1
                self.rooms.announce(event.room, "ai_busy", f"{event.username}, {refusal}", self.name)
                return
            self._busy_senders.add(sender)
            self._started.append(self.clock())
            self.stats.requests += 1
            self.stats.waiting += 1
        threading.Thread(target=self._answer, args=(event, sender), name="assistant-request",
                         daemon=True).start()

    def _over_limits(self) -> str | None:
        """Why a new request cannot be taken now (None when it can). Caller holds _lock."""
        now = self.clock()
        while self._started and now - self._started[0] >= 60.0:
            self._started.popleft()
        if self.stats.waiting + self.stats.in_flight >= MAX_IN_FLIGHT + self.settings.ai_queue_size:
            return f"{self.name} has too many questions waiting; ask again in a moment."
        if len(self._started) >= self.settings.ai_requests_per_minute:
            return f"{self.name} has answered its share for this minute; ask again shortly."
        return None

    # --- answering ------------------------------------------------------------------

    def context_for(self, message: Message) -> list[dict]:
        """System prompt + the room's last AI_CONTEXT_MESSAGES messages as chat turns."""
        prompt = self.settings.ai_system_prompt or DEFAULT_SYSTEM_PROMPT.format(name=self.name)
        turns = [{"role": "system", "content": prompt}]
        history = self.rooms.history_of(message.room, self.settings.ai_context_messages,
                                        before_seq=message.seq + 1)
        for past in history:
            if past.type == AI_RESPONSE:
                turns.append({"role": "assistant", "content": past.content})
            else:
                text = self._mention.sub("", past.content, count=1) or past.content
                readings = f" [data: {past.data}]" if past.data else ""
                turns.append({"role": "user", "content": f"{past.username}: {text}{readings}"})
        return self._within_bytes(turns)

    def _within_bytes(self, turns: list[dict]) -> list[dict]:
        """Drop the oldest turns until the request fits AI_CONTEXT_BYTES; the system prompt
        and the question stay (the question cut if it alone is too long)."""
        budget = self.settings.ai_context_bytes
        def size(turn: dict) -> int:
            return len(turn["content"].encode("utf-8"))

        system, history = turns[0], turns[1:]
        while len(history) > 1 and size(system) + sum(map(size, history)) > budget:
            history.pop(0)
        if history and size(system) + size(history[0]) > budget:
            room = max(0, budget - size(system))
            history[0] = {**history[0], "content": history[0]["content"].encode("utf-8")[:room]
                          .decode("utf-8", errors="ignore")}
        return [system, *history]

    def _answer(self, message: Message, sender: tuple) -> None:
        reply_id = str(uuid.uuid4())
        started = time.monotonic()
        with self._slots:  # at most MAX_IN_FLIGHT requests at once; others wait their turn
            with self._lock:
                self.stats.waiting -= 1
                self.stats.in_flight += 1
            try:
                if self.backend is None:  # answers are queued only when the assistant is on
                    raise AssistantError("the assistant is off")
                pieces: list[str] = []
                calls: list[ToolCall] = []
                tools = device_tools.tools_for(self.desk, message.room) \
                    if self.desk is not None and self.may_act(message) else None
                context = self.context_for(message)
                if tools:
                    context[0] = {**context[0], "content": f"{context[0]['content']} {device_tools.PROMPT}"}
                for delta in self.backend.stream(context, tools) if tools else self.backend.stream(context):
                    if isinstance(delta, ToolCall):
                        calls.append(delta)
                        continue
                    pieces.append(delta)
                    self.rooms.stream(AssistantDelta(message.room, message.message_id, reply_id, delta))
                if calls and tools and self.desk is not None:  # announced in the room as commands by the desk
                    pieces.append("\n" + device_tools.carry_out(self.desk, message.room, calls,
                                                                f"{self.name} for {message.username}"))
                text = "".join(pieces).strip()
                if not text:
                    raise AssistantError("the assistant gave an empty answer")
                self.rooms.post(message.room, self.name, text[: self.settings.max_message_chars], Source.AI,
                                type=AI_RESPONSE, reply_to=message.message_id, message_id=reply_id)
                with self._lock:
                    self.stats.answered += 1
                    self.stats.total_latency += time.monotonic() - started
            except AssistantError as exc:
                self._fail(message, str(exc))
            except Exception:
                log.exception("assistant request failed")
                self._fail(message, "the assistant failed unexpectedly")
            finally:
                with self._lock:
                    self.stats.in_flight -= 1
                    self._busy_senders.discard(sender)

    def _fail(self, message: Message, reason: str) -> None:
        with self._lock:
            self.stats.failures += 1
        log.warning("assistant could not answer %s in %s: %s", message.message_id, message.room, reason)
        self.rooms.announce(message.room, "ai_error", f"No answer for {message.username}: {reason}.", self.name)

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            return {
                "enabled": self.enabled,
                "model": self.settings.ai_model if self.enabled else None,
                "reply_mode": self.mode,
                "requests": self.stats.requests,
                "failures": self.stats.failures,
                "refused": self.stats.refused,
                "waiting": self.stats.waiting,
                "in_flight": self.stats.in_flight,
                "average_latency_ms": self.stats.average_latency_ms,
            }

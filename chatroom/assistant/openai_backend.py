"""What talks to the model: any OpenAI-compatible endpoint through the openai SDK,
streaming. The listener (chatroom/assistant/listener.py) sees only `ChatBackend`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, cast

from chatroom.config import Settings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


class AssistantError(Exception):
    """A failure with a short reason that is safe to show in the room."""


@dataclass(frozen=True)
class ToolCall:
    """The model asks to call a tool (a declared device command: assistant/device_tools.py)."""

    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatBackend(Protocol):
    def stream(self, messages: list[dict], tools: list[dict] | None = None) -> Iterable[str | ToolCall]:
        """Yield the reply's text pieces, then any tool calls; raise AssistantError with a human reason."""


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through the openai SDK (streaming)."""

    def __init__(self, settings: Settings):
        import openai  # imported only when the assistant is on: it is slow to import

        self._openai = openai
        self.model = settings.ai_model
        self.timeout = settings.ai_timeout
        self.max_tokens = settings.ai_max_tokens
        self.client = openai.OpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url or None,
            timeout=settings.ai_timeout,
            max_retries=1,  # the SDK retries only transient errors (429, 5xx, connection, timeout)
        )

    def stream(self, messages: list[dict], tools: list[dict] | None = None) -> Iterator[str | ToolCall]:
        openai = self._openai
        calls: dict[int, list[str]] = {}  # index -> [name, arguments so far]: they come in pieces
        try:
            extra = {"tools": tools} if tools else {}
            chunks = self.client.chat.completions.create(model=self.model, stream=True,
                                                         messages=cast("list[ChatCompletionMessageParam]", messages),
                                                         max_tokens=self.max_tokens, **extra)  # type: ignore[call-overload]
            for chunk in chunks:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                if delta.content:
                    yield delta.content
                for piece in delta.tool_calls or ():
                    call = calls.setdefault(piece.index, ["", ""])
                    if piece.function is not None:
                        call[0] += piece.function.name or ""
                        call[1] += piece.function.arguments or ""
            for index in sorted(calls):
                yield ToolCall(*calls[index])
        except openai.APITimeoutError:
            raise AssistantError(f"the assistant did not answer within {self.timeout:g} s") from None
        except openai.RateLimitError:
            raise AssistantError("the assistant's service is busy (rate limited); try again shortly") from None
        except openai.AuthenticationError:
            raise AssistantError("the assistant's service refused our API key") from None
        except openai.APIStatusError as exc:
            raise AssistantError(f"the assistant's service failed (HTTP {exc.status_code})") from None
        except openai.APIConnectionError:
            raise AssistantError("the assistant's service cannot be reached") from None

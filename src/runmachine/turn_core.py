"""The core of an agent-session turn: its lifecycle, applied from the turn table. No I/O.

A ``TurnCore`` is fed the SDK's ``AgentSessionEvent`` objects of one session's event stream, one
at a time, through ``feed()``. The stream is the session's, not the turn's: it carries the
session's own news, other turns (subagents) and repeats (the server may deliver an event twice).
The core keeps to its turn:

- an event seen before (the same ``event_id``) is set aside as a repeat;
- the first root ``turn.created`` it sees names its turn (the driver subscribes before it sends
  the input, and one writer sends input to a session at a time), unless it was given one;
- events of other turns go to ``on_event`` and nowhere else;
- ``agent.session.requires_action`` is the turn's when it lists a required action of the turn.

Lifecycle events go through the engine built from ``runmachine.lifecycle.TURN_TRANSITIONS``;
text events take a fast path that accumulates the text and calls the text hooks with the SDK's
``Text``/``TextDelta`` types, as for an Assistants run, so one hook serves both backends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from openai.types.beta.agent_session import AgentSession
from openai.types.beta.agent_session_assistant_message import AgentSessionAssistantMessage
from openai.types.beta.agent_session_event import AgentSessionEvent
from openai.types.beta.agent_session_message import AgentSessionMessage
from openai.types.beta.agents.sessions.turn import Turn
from openai.types.beta.threads import Text, TextDelta

from runmachine import lifecycle
from runmachine.core import CoreBase, append_text
from runmachine.engine import Engine, engine_for
from runmachine.errors import ProtocolViolation
from runmachine.records import ToleratedEvent

__all__ = [
    "TURN_ENGINE",
    "TurnCore",
    "TurnMessage",
    "action_id",
    "message_text",
    "required_actions",
]

#: The engine of the turn table with no hooks (a ``TurnCore`` made on its own).
TURN_ENGINE: Engine = engine_for(
    lifecycle.TURN_TRANSITIONS, frozenset(), "turn", lifecycle.TURN_STATES
)

#: How many event ids are remembered to drop repeats (as the SDK's own helper does).
RECENT_EVENTS = 1024


def required_actions(session: AgentSession | None, turn_id: str | None) -> list[Any]:
    """The session's required actions that belong to turn ``turn_id``, in the server's order."""
    if session is None or turn_id is None:
        return []
    return [a for a in session.required_actions if getattr(a, "turn_id", None) == turn_id]


#: An assistant message of a turn, as the SDK gives it (from an event or from a list of items).
TurnMessage = AgentSessionMessage | AgentSessionAssistantMessage


def message_text(message: TurnMessage) -> str:
    """The output text of an assistant message, its parts joined."""
    return "".join(part.text for part in message.content if part.type == "output_text")


def action_id(action: Any) -> str:
    """A required action's id: its ``call_id`` (a function call) or ``request_id``."""
    return str(action.call_id if action.type == "function_call" else action.request_id)


class TurnCore(CoreBase):
    """The state, history and text of one turn, moved only by the turn table's triggers.

    ``run_id`` is the turn's id (``turn_id``), ``thread_id`` its session's (``session_id``;
    ``None`` until a session being created is named).
    """

    terminal_states = lifecycle.TURN_TERMINAL_STATES
    cancellable_states = lifecycle.TURN_ACTIVE_STATES

    def __init__(
        self,
        target: object | None = None,
        *,
        session_id: str | None,
        turn_id: str | None = None,
        engine: Engine | None = None,
        hooks: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(target, engine=engine if engine is not None else TURN_ENGINE, hooks=hooks)
        self.thread_id = session_id
        self.run_id = turn_id
        self._turn: Turn | None = None
        self._session: AgentSession | None = None
        self._event: AgentSessionEvent | None = None
        self._seen: set[str] = set()
        self._recent: deque[str] = deque()
        #: Assistant messages of the turn, by item id, in the order they began.
        self._messages: dict[str, TurnMessage | None] = {}
        #: Text parts being streamed: (item id, content index) -> the text so far.
        self._texts: dict[tuple[str, int], Text] = {}
        self._usage: Any = None

    # ----------------------------------------------------------------------------------------
    # Reading
    # ----------------------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        assert self.thread_id is not None
        return self.thread_id

    @property
    def turn_id(self) -> str | None:
        return self.run_id

    def subject(self) -> Turn | None:
        return self._turn

    def status(self) -> str | None:
        if self._turn is None:
            return None
        state = lifecycle.TURN_STATUS_STATE[self._turn.status]
        if state == lifecycle.IN_PROGRESS and self.actions():
            # The session's news is newer than the turn's: it waits on the client.
            return lifecycle.REQUIRES_ACTION
        return state

    def required_ids(self) -> frozenset[str]:
        return frozenset(action_id(a) for a in self.actions())

    def remember(self, subject: Any) -> None:
        self.remember_turn(subject)

    def actions(self) -> list[Any]:
        """What the session waits on for this turn now (function calls and approvals)."""
        return required_actions(self._session, self.run_id)

    def current_event(self) -> AgentSessionEvent | None:
        return self._event

    def current_turn(self) -> Turn | None:
        """The turn as of the latest event of it (or read back)."""
        return self._turn

    def current_session(self) -> AgentSession | None:
        """The session as of its latest snapshot (an event's, or read back)."""
        return self._session

    @property
    def usage(self) -> Any:
        """The turn's token usage (the SDK's ``TokenUsage``), once its end reported it."""
        if self._usage is not None:
            return self._usage
        return self._turn.usage if self._turn is not None else None

    def final_messages(self) -> list[TurnMessage]:
        """The assistant messages of the turn that were completed, in order."""
        return [m for m in self._messages.values() if m is not None]

    def text(self) -> str:
        """All the assistant text of this turn: messages joined by a blank line (a message whose
        end was not seen counts with the text streamed so far)."""
        parts = []
        for item_id, message in self._messages.items():
            if message is not None:
                text = message_text(message)
            else:
                text = "".join(t.value for (i, _), t in sorted(self._texts.items()) if i == item_id)
            if text:
                parts.append(text)
        return "\n\n".join(parts)

    # ----------------------------------------------------------------------------------------
    # What the driver tells the core
    # ----------------------------------------------------------------------------------------

    def remember_turn(self, turn: Turn | None, session: AgentSession | None = None) -> None:
        """Take ``turn`` (and ``session``) as the latest report (from an event or read back)."""
        if turn is not None:
            self._turn = turn
            if self.run_id is None:
                self.run_id = turn.id
        if session is not None:
            self._session = session

    def replace_messages(self, items: Iterable[Any]) -> None:
        """Take the turn's items as read from the server (oldest first) as the authoritative
        messages: text lost with a dropped stream comes back in its place."""
        fresh: dict[str, TurnMessage | None] = {}
        for item in items:
            if item.type == "message" and item.role == "assistant" and item.id is not None:
                fresh[item.id] = item
        rest = {k: v for k, v in self._messages.items() if k not in fresh}
        self._messages = {**fresh, **rest}

    async def adopt(self, turn: Turn, session: AgentSession | None) -> None:
        """Pick up a turn that already exists on the server, in whatever status it reports."""
        self.remember_turn(turn, session)
        if not await self._fire(lifecycle.ADOPT, turn):
            raise ProtocolViolation(
                lifecycle.ADOPT,
                self.state,
                turn.id,
                f"cannot adopt a turn in status {turn.status!r}",
            )

    async def observe(self, turn: Turn, session: AgentSession | None) -> None:
        """Bring the core to the turn's status as read back (not streamed); the events the jump
        implies are fed in order, so state hooks fire as they would on a stream."""
        self.remember_turn(turn, session)
        status = self.status()
        assert status is not None
        if status == self.state:
            return
        if self.state == lifecycle.CANCELLING and status not in lifecycle.TURN_TERMINAL_STATES:
            return  # the server has not acted on the cancel yet
        try:
            events = lifecycle.path_to_status(
                self.state, status, lifecycle.TURN_SERVER_EVENT_TRANSITIONS
            )
        except ValueError as exc:
            raise ProtocolViolation(
                f"status {turn.status}", self.state, turn.id, "not reachable from here"
            ) from exc
        for name in events:
            await self._lifecycle(name, turn, None)

    # ----------------------------------------------------------------------------------------
    # Feeding events
    # ----------------------------------------------------------------------------------------

    async def feed(self, event: AgentSessionEvent) -> None:
        """Feed one event of the session's stream. Lifecycle events are processed one at a time,
        in the order they arrive."""
        name = getattr(event, "type", None)
        label = name if isinstance(name, str) else "<unnamed>"
        event_id = getattr(event, "event_id", None)
        if isinstance(event_id, str):
            if event_id in self._seen:
                self._tolerate(label, "repeat")
                return
            if len(self._recent) == RECENT_EVENTS:
                self._seen.discard(self._recent.popleft())
            self._recent.append(event_id)
            self._seen.add(event_id)
        if name in lifecycle.TURN_EVENTS:
            if (
                self.run_id is None
                and name == lifecycle.TURN_CREATED
                and event.turn.subagent_id is None  # type: ignore[union-attr]
            ):
                self.run_id = event.turn_id  # type: ignore[union-attr]
            if event.turn_id != self.run_id:  # type: ignore[union-attr]
                await self._other(event)
                return
            turn: Turn = event.turn  # type: ignore[union-attr]
            ended = lifecycle.TURN_STATUS_STATE.get(turn.status) in lifecycle.TURN_TERMINAL_STATES
            if name != lifecycle.TURN_CREATED and ended:
                self._usage = getattr(event, "usage", None) or turn.usage
            await self._lifecycle(label, turn, event)
            return
        if name in lifecycle.SESSION_LIFECYCLE_EVENTS:
            session: AgentSession = event.session  # type: ignore[union-attr]
            if self.run_id is None or self.state == lifecycle.PENDING:
                await self._other(event)  # news of the session before this turn began
                return
            if name == lifecycle.SESSION_REQUIRES_ACTION and not required_actions(
                session, self.run_id
            ):
                await self._other(event)  # it waits on another turn (a subagent's)
                return
            self._session = session
            await self._lifecycle(label, self._turn, event)
            return
        turn_id = getattr(event, "turn_id", None)
        if turn_id is not None and turn_id != self.run_id:
            await self._other(event)
            return
        if name in lifecycle.TURN_CONTENT_EVENTS:
            if self.state in lifecycle.TURN_TERMINAL_STATES and name not in _AFTER_END:
                raise ProtocolViolation(label, self.state, self.run_id)
            self._event = event
            if "on_event" in self.hooks:
                await self.call_hook("on_event", event)
            await self._content(label, event)
            self._event = None
            return
        # An event this version does not know (``budget_reached``, new ones): tolerated.
        self._tolerate(label, "unknown")
        if "on_event" in self.hooks:
            await self.call_hook("on_event", event)

    def _tolerate(self, name: str, kind: str) -> None:
        self.tolerated.append(
            ToleratedEvent(name, self.state, self.run_id, time.monotonic(), kind)  # type: ignore[arg-type]
        )

    async def _other(self, event: Any) -> None:
        """An event that is not this turn's: shown to ``on_event``, nothing else."""
        if "on_event" in self.hooks:
            await self.call_hook("on_event", event)

    async def _lifecycle(self, name: str, turn: Turn | None, event: Any) -> None:
        kind = lifecycle.classify_turn_event(self.state, name)
        if kind == "violation":
            raise ProtocolViolation(name, self.state, self.run_id)
        if turn is not None:
            self.remember_turn(turn)
        if event is not None:
            self._event = event
            if "on_event" in self.hooks:
                await self.call_hook("on_event", event)
        if kind in ("repeat", "late"):
            self._tolerate(name, kind)
        elif not await self._fire(name, self._turn):
            # A guarded row that does not hold: the session lists the round being answered
            # again (the answers have not all landed yet). Nothing new.
            self._tolerate(name, "repeat")
        self._event = None

    async def _content(self, name: str, event: Any) -> None:
        hooks = self.hooks
        if name == lifecycle.TURN_TEXT_DELTA:
            text = self._texts.get((event.item_id, event.content_index))
            if text is None:
                text = self._new_text(event.item_id, event.content_index, "")
            append_text(text, event.delta)
            if "on_text_delta" in hooks:
                await self.call_hook("on_text_delta", TextDelta(value=event.delta), text)
        elif name == lifecycle.TURN_CONTENT_PART_ADDED:
            text = self._new_text(event.item_id, event.content_index, event.part.text)
            if "on_text_created" in hooks:
                await self.call_hook("on_text_created", text)
        elif name == lifecycle.TURN_TEXT_DONE:
            text = self._texts.get((event.item_id, event.content_index))
            if text is None:
                text = self._new_text(event.item_id, event.content_index, "")
            text.value = event.text
            if "on_text_done" in hooks:
                await self.call_hook("on_text_done", text)
        elif name in (lifecycle.TURN_ITEM_ADDED, lifecycle.TURN_ITEM_DONE):
            item = event.item
            if item.type == "message" and item.role == "assistant" and item.id is not None:
                done = name == lifecycle.TURN_ITEM_DONE
                self._messages[item.id] = item if done else self._messages.get(item.id)
        elif name == lifecycle.ERROR_EVENT:
            self.stream_errors.append(event.error)

    def _new_text(self, item_id: str, index: int, value: str) -> Text:
        self._messages.setdefault(item_id, None)
        text = self._texts[(item_id, index)] = Text(value=value, annotations=[])
        return text


#: Content events that may still arrive once the turn has ended: the session's own news.
_AFTER_END = frozenset({lifecycle.SESSION_IDLE, lifecycle.SESSION_CREATED, lifecycle.ERROR_EVENT})

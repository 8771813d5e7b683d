"""The control source an engine obeys: pause, resume, step and stop, in the order sent.

Track adapters call these methods when a command arrives (from Kafka, Postgres or DBOS);
the engine drains them before each scheduling decision, so a command sent before the run
starts (a durable `stop` or `pause`) takes effect before the first node.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from twintrack.domain.commands import Command


@dataclass(frozen=True)
class ControlMessage:
    command: Command
    reason: str | None = None


class ExecutionControl:
    def __init__(self) -> None:
        self._pending: deque[ControlMessage] = deque()
        self._signal = asyncio.Event()
        self.stop_reason: str | None = None

    def _push(self, message: ControlMessage) -> None:
        self._pending.append(message)
        self._signal.set()

    def pause(self) -> None:
        self._push(ControlMessage(Command.PAUSE))

    def resume(self) -> None:
        self._push(ControlMessage(Command.RESUME))

    def step(self) -> None:
        self._push(ControlMessage(Command.STEP))

    def stop(self, reason: str | None = None) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason or "stopped"
        self._push(ControlMessage(Command.STOP, reason))

    def send(self, command: Command, reason: str | None = None) -> None:
        """Dispatch by name; `start` is not an engine control and is ignored here."""
        if command is Command.PAUSE:
            self.pause()
        elif command is Command.RESUME:
            self.resume()
        elif command is Command.STEP:
            self.step()
        elif command is Command.STOP:
            self.stop(reason)

    def drain(self) -> list[ControlMessage]:
        messages = list(self._pending)
        self._pending.clear()
        self._signal.clear()
        return messages

    async def wait(self) -> None:
        await self._signal.wait()

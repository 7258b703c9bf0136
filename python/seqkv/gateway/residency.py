"""Which conversation state each upstream slot holds, and the slot files kept on disk.

A slot is trusted to hold a node's KV only while the server's ``/slots`` still shows the task
id and token count recorded when the gateway last used it; anything else (a restarted server,
another client using the slot) makes it unknown, and the next turn restores or replays.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SlotState", "SlotPool", "SlotFiles", "SLOT_SUFFIX"]

SLOT_SUFFIX = ".ggsq"


@dataclass
class SlotState:
    index: int
    node: str | None = None  # the node whose post-turn KV the slot holds
    cached: int = 0
    id_task: int | None = None
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget(self) -> None:
        self.node, self.cached, self.id_task = None, 0, None


class SlotPool:
    """The slots of one upstream (see :meth:`acquire`)."""

    def __init__(self, n_slots: int):
        self.slots = [SlotState(i) for i in range(n_slots)]
        self._changed = asyncio.Condition()

    def holding(self, node: str | None) -> SlotState | None:
        if node is None:
            return None
        return next((s for s in self.slots if s.node == node), None)

    async def acquire(self, parent: str | None, home: int | None = None, *, wait_for_home: bool = False
                      ) -> SlotState:
        """A slot for a turn after ``parent``: the one holding it, else ``home`` (the slot that
        computed it) when free, else the least recently used free one; with ``wait_for_home``,
        ``home`` and no other."""
        async with self._changed:
            while True:
                held = self.holding(parent)
                free = [s for s in self.slots if not s.lock.locked()]
                choice: SlotState | None
                if home is not None and wait_for_home:
                    choice = self.slots[home] if self.slots[home] in free else None
                elif held is not None:
                    choice = held if held in free else None  # wait for the slot that has our state
                elif home is not None and self.slots[home] in free:
                    choice = self.slots[home]
                else:
                    choice = min(free, key=lambda s: s.last_used) if free else None
                if choice is not None:
                    await choice.lock.acquire()
                    return choice
                await self._changed.wait()

    async def release(self, slot: SlotState) -> None:
        slot.last_used = time.monotonic()
        slot.lock.release()
        async with self._changed:
            self._changed.notify_all()

    def forget_all(self) -> None:
        for s in self.slots:
            s.forget()


class SlotFiles:
    """Slot files (``<node>.ggsq``) in an upstream's ``--slot-save-path``, least recently used
    removed first once they exceed ``budget_bytes``."""

    def __init__(self, folder: Path, budget_bytes: int):
        self.folder = folder
        self.budget_bytes = budget_bytes
        self._files: OrderedDict[str, int] = OrderedDict()
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*" + SLOT_SUFFIX), key=lambda p: p.stat().st_mtime):
            self._files[path.name[: -len(SLOT_SUFFIX)]] = path.stat().st_size

    @staticmethod
    def filename(node: str) -> str:
        return node + SLOT_SUFFIX

    def has(self, node: str) -> bool:
        if node in self._files and (self.folder / self.filename(node)).is_file():
            self._files.move_to_end(node)
            return True
        self._files.pop(node, None)
        return False

    def nodes(self) -> list[str]:
        return list(self._files)

    def added(self, node: str) -> list[str]:
        """Record a file the server just wrote; returns the nodes whose files were removed."""
        self._files[node] = (self.folder / self.filename(node)).stat().st_size
        self._files.move_to_end(node)
        removed = []
        while sum(self._files.values()) > self.budget_bytes and len(self._files) > 1:
            old, _ = self._files.popitem(last=False)
            self.remove(old)
            removed.append(old)
        return removed

    def remove(self, node: str) -> None:
        self._files.pop(node, None)
        try:
            os.unlink(self.folder / self.filename(node))
        except FileNotFoundError:
            pass

    @property
    def total_bytes(self) -> int:
        return sum(self._files.values())

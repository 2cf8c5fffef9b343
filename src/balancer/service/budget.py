"""The process's connection budget, HAProxy's global `maxconn`, shared by its services."""

from __future__ import annotations

from typing import Protocol


class Waiting(Protocol):
    def admit_waiting(self) -> None: ...


class Budget:
    """How many connections the whole process may relay at once.

    Each relayed connection holds two descriptors; past the budget, clients wait in the listen
    backlog instead of being accepted into a process that cannot open their backend connection.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit  # 0: no limit
        self.running = 0
        self.services: list[Waiting] = []

    def full(self) -> bool:
        return bool(self.limit) and self.running >= self.limit

    def freed(self) -> None:
        for service in self.services:
            service.admit_waiting()

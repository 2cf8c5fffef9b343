"""The queue for busy backends in-process: first come, first served, and the free slots."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from balancer.core.address import Address
from balancer.pool.backend import Backend
from balancer.service.queue import BackendQueue, free_slots


@dataclass(eq=False)
class Client:
    name: str
    queued_until: float = 0.0


def test_first_come_first_served_within_its_size() -> None:
    queue: BackendQueue[Client] = BackendQueue(2)
    a, b, c = Client("a", 1.0), Client("b", 2.0), Client("c", 3.0)
    assert queue.join(a) and queue.join(b)
    assert not queue.join(c)  # full
    assert len(queue) == 2 and bool(queue)
    assert queue.pop() is a and queue.pop() is b and queue.pop() is None
    assert not queue


def test_a_woken_client_that_lost_its_slot_goes_back_to_its_place() -> None:
    queue: BackendQueue[Client] = BackendQueue(10)
    early, late1, late2 = Client("early", 1.0), Client("late1", 2.0), Client("late2", 3.0)
    for client in (early, late1, late2):
        queue.join(client)
    woken = queue.pop()
    assert woken is early
    queue.rejoin(early)  # (someone took the slot first)
    assert [c.name for c in queue] == ["early", "late1", "late2"]
    # One that joined later than the rest goes behind them.
    queue.pop()
    queue.rejoin(Client("later", 4.0))
    assert [c.name for c in queue] == ["late1", "late2", "later"]


@given(st.lists(st.floats(0, 100), min_size=1, max_size=20), st.data())
def test_rejoining_keeps_the_queue_in_order_of_joining(
    deadlines: list[float], data: st.DataObject
) -> None:
    queue: BackendQueue[Client] = BackendQueue(100)
    for i, until in enumerate(sorted(deadlines)):
        queue.join(Client(str(i), until))
    for _ in range(data.draw(st.integers(0, len(deadlines)))):
        client = queue.pop()
        assert client is not None
        queue.rejoin(client)
    order = [c.queued_until for c in queue]
    assert order == sorted(order)


def test_leave_is_silent_for_a_client_not_in_it() -> None:
    queue: BackendQueue[Client] = BackendQueue(10)
    a = Client("a")
    queue.join(a)
    queue.leave(a)
    queue.leave(a)
    assert len(queue) == 0


def backend(port: int, limit: int, active: int) -> Backend:
    b = Backend(Address("127.0.0.1", port))
    b.max_connections = limit
    b.active = active
    return b


def test_free_slots_count_every_worker() -> None:
    capped = [backend(9001, 3, 1), backend(9002, 2, 2)]
    assert free_slots(capped, lambda b: 0, 10) == 2
    assert free_slots(capped, lambda b: 1, 10) == 1  # (another worker holds one on each)
    assert free_slots(capped, lambda b: 5, 10) == 0  # (over the limit counts as none)
    assert free_slots(capped, lambda b: 0, 1) == 1  # (no more than are waiting)
    # A backend without a limit has room for everyone.
    assert free_slots([*capped, backend(9003, 0, 50)], lambda b: 0, 7) == 7
    assert free_slots([], lambda b: 0, 7) == 0

"""Running an iterator one step ahead on a background thread, so that producing the next item
(parsing, converting: Arrow work that releases the GIL) overlaps consuming this one. Memory stays
bounded: at most `depth` items wait in the queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield the items of `items`, produced on a background thread up to `depth` ahead. An
    exception in the producer is raised here; leaving the loop early stops the producer."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failure(error))

    producer = threading.Thread(target=produce, name="ingest-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join()

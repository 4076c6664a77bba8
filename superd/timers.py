"""A heap of one-shot timers for the event loop.

The loop asks `delay(now)` how long it may sleep and calls `run_due(now)`
after every wake-up.  A timer is cancelled by calling `cancel()` on the
handle `at()` returned.  Nothing here reads the clock: the loop passes `now`
in, which keeps this testable.

Promise: memory follows the live timers, not the cancelled ones.  A cancel
lets go of its callback at once (a handler timeout's callback holds its
Connection), and once cancelled entries are most of the heap it is rebuilt
without them: behind one long timer at the top, a heap that dropped entries
only when they surfaced kept every later connection's timer, Connection and
all (bench/records_memory.py: 1.5 kB per connection, rate x timeout of them).
"""

import heapq
import itertools

MAX_SLEEP = 86400.0       # seconds: far below epoll's limit
COMPACT_AFTER = 64        # cancelled entries before a rebuild is worth its O(n)


class Timer:
    __slots__ = ("when", "callback", "cancelled", "_owner")

    def __init__(self, when, callback, owner):
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._owner = owner

    def cancel(self):
        if not self.cancelled:
            self.cancelled = True
            self.callback = None
            self._owner._cancelled_one()


class Timers:
    def __init__(self):
        self._heap = []
        self._seq = itertools.count()
        self._cancelled = 0       # cancelled entries still in the heap

    def __len__(self):
        """Entries in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def at(self, when, callback):
        timer = Timer(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def delay(self, now):
        """Seconds until the next live timer, or None when there is none."""
        self._drop_cancelled_top()
        if not self._heap:
            return None
        return min(MAX_SLEEP, max(0.0, self._heap[0][0] - now))

    def run_due(self, now):
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            callback, timer.callback = timer.callback, None
            timer.cancelled = True       # a cancel() from inside the callback is a no-op
            callback()

    def _drop_cancelled_top(self):
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled -= 1

    def _cancelled_one(self):
        self._cancelled += 1
        if self._cancelled > COMPACT_AFTER and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

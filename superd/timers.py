"""A heap of one-shot timers for the event loop.

The loop asks `delay(now)` how long it may sleep and calls `run_due(now)`
after every wake-up.  A timer is cancelled by calling `cancel()` on the
handle `at()` returned; cancelled entries are dropped lazily.  Nothing here
reads the clock: the loop passes `now` in, which keeps this testable.
"""

import heapq
import itertools

MAX_SLEEP = 86400.0       # seconds: far below epoll's limit


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when, callback):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Timers:
    def __init__(self):
        self._heap = []
        self._seq = itertools.count()

    def at(self, when, callback):
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def delay(self, now):
        """Seconds until the next live timer, or None when there is none."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return min(MAX_SLEEP, max(0.0, self._heap[0][0] - now))

    def run_due(self, now):
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

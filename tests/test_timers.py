"""The loop's timer heap: order, cancels, and memory that follows the live timers."""

import gc
import weakref

from superd.timers import COMPACT_AFTER, Timers


class Payload:
    """Stands for the Connection a handler timeout's callback holds."""


def test_timers_run_in_deadline_order_and_only_once():
    timers, ran = Timers(), []
    for when in (3, 1, 2):
        timers.at(when, lambda when=when: ran.append(when))
    assert timers.delay(0) == 1
    timers.run_due(2)
    assert ran == [1, 2] and timers.delay(2) == 1
    timers.run_due(10)
    timers.run_due(10)
    assert ran == [1, 2, 3] and timers.delay(10) is None


def test_a_cancelled_timer_never_runs_and_a_cancel_after_running_is_harmless():
    timers, ran = Timers(), []
    a = timers.at(1, lambda: ran.append("a"))
    b = timers.at(2, lambda: ran.append("b"))
    a.cancel()
    a.cancel()
    assert timers.delay(0) == 2
    timers.run_due(5)
    b.cancel()
    assert ran == ["b"] and timers.delay(5) is None and len(timers) == 0


def test_a_cancel_lets_go_of_what_its_callback_holds_at_once():
    timers = Timers()
    timers.at(1, lambda: None)                  # a long session's timer, at the top
    payload = Payload()
    timer = timers.at(3600, lambda held=payload: held)
    ref = weakref.ref(payload)
    del payload
    timer.cancel()
    gc.collect()
    assert ref() is None, "the cancelled timer still holds its connection"


def test_cancelled_timers_behind_a_live_one_do_not_pile_up():
    timers, ran = Timers(), []
    timers.at(1, lambda: ran.append("long session"))        # never cancelled, at the top
    for n in range(10_000):                                    # each connection: armed, reaped
        timers.at(3600 + n, lambda: ran.append("late")).cancel()
        assert len(timers) <= 2 * COMPACT_AFTER + 2
    live = [timers.at(7200 + n, lambda n=n: ran.append(n)) for n in range(3)]
    for timer in live[:1]:
        timer.cancel()
    timers.run_due(10_000)
    assert ran == ["long session", 1, 2]
    assert timers.delay(10_000) is None and len(timers) == 0

"""The one reconnect rule (``reconciler.backoff``): doubling delays, capped, reset on success."""

from __future__ import annotations

from reconciler.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5

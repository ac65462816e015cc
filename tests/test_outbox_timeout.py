"""The ack timeout follows the peer's measured ack time (RFC 6298), never below the floor."""

from __future__ import annotations

from agentd.runtime.outgoing import ACK_TIMEOUT_MAX, ACK_TIMEOUT_MIN, RoundTrip, ack_timeout


def test_without_samples_the_timeout_is_the_floor():
    assert RoundTrip().rto == ACK_TIMEOUT_MIN


def test_a_steady_slow_peer_gets_a_timeout_above_its_ack_time():
    trip = RoundTrip()
    for _ in range(50):
        trip.sample(3.0)  # a loaded peer acking in 3 s, every time
    assert 3.0 <= trip.rto < 3.2
    assert all(ack_timeout(1, trip.rto) >= 0.8 * trip.rto for _ in range(100))


def test_variation_widens_the_timeout_and_a_fast_peer_keeps_the_floor():
    jittery, fast = RoundTrip(), RoundTrip()
    for n in range(50):
        jittery.sample(1.0 if n % 2 else 3.0)
        fast.sample(0.001)
    assert jittery.rto > 3.0  # mean 2 s plus four times a variation of about 1 s
    assert fast.rto < ACK_TIMEOUT_MIN
    assert min(ack_timeout(1, fast.rto) for _ in range(100)) >= 0.8 * ACK_TIMEOUT_MIN


def test_retries_back_off_from_the_measured_timeout_up_to_the_cap():
    assert 0.8 * 8 <= ack_timeout(2, 4.0) <= 1.2 * 8
    assert ack_timeout(20, 4.0) <= 1.2 * ACK_TIMEOUT_MAX

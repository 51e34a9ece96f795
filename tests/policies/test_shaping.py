"""policies.shaping: which replies are throttle signals, how a shared limit falls and grows,
how the relays share it, one relay's round (``settle``), and a simulation of three relays
sharing one key against an upstream that enforces its own limits.

Pure: no database, no sleeping. Time is plain datetimes from a fixed instant; randomness is
``random.Random(seed)``, so every run sees the same cases.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from policies.categories import Category
from policies.shaping import (
    Change,
    ClusterUse,
    Limit,
    RelayUse,
    ShapingRules,
    Signal,
    after_signal,
    connection_share,
    group_of,
    grow,
    rate_share,
    settle,
    signal_of,
)

T0 = datetime(2030, 5, 6, 7, 0, tzinfo=UTC)  # any instant: nothing here reads today's date
S = timedelta(seconds=1)
LONG_AGO = T0 - 10 * 60 * S  # a change this old holds nothing back
RULES = ShapingRules()  # the shipped defaults: 20 connections, no rate until one is learned
GROUP = "mx.example.net"  # no provider's: its own group


# -- signal_of ----------------------------------------------------------------------------------


@pytest.mark.parametrize("at_greeting", [True, False])
@pytest.mark.parametrize(
    ("code", "category", "hint"),
    [
        (421, Category.SERVICE_UNAVAILABLE, False),
        (451, Category.RATE_LIMITED, False),
        (450, Category.OTHER, True),
    ],
)
def test_our_own_replies_are_never_signals(at_greeting, code, category, hint):
    """A lost connection or a timeout is ours, not the upstream's word on its limits."""
    signal = signal_of(code, category, at_greeting=at_greeting, synthetic=True, slow_down_hint=hint)
    assert signal is None


@pytest.mark.parametrize(
    "category", [Category.SERVICE_UNAVAILABLE, Category.OTHER, Category.RATE_LIMITED]
)
def test_a_421_at_the_greeting_is_too_many_connections(category):
    assert signal_of(421, category, at_greeting=True, synthetic=False) is Signal.CONNECTIONS


def test_a_rate_limit_at_the_greeting_is_too_many_connections():
    signal = signal_of(450, Category.RATE_LIMITED, at_greeting=True, synthetic=False)
    assert signal is Signal.CONNECTIONS


@pytest.mark.parametrize("code", [421, 450, 451, 452, 550])
def test_a_rate_limit_after_the_greeting_is_too_many_messages(code):
    signal = signal_of(code, Category.RATE_LIMITED, at_greeting=False, synthetic=False)
    assert signal is Signal.RATE


def test_a_slow_down_hint_after_the_greeting_is_too_many_messages():
    signal = signal_of(450, Category.OTHER, at_greeting=False, synthetic=False, slow_down_hint=True)
    assert signal is Signal.RATE


@pytest.mark.parametrize("at_greeting", [True, False])
@pytest.mark.parametrize(
    ("code", "category"),
    [
        (450, Category.GREYLISTED),
        (451, Category.GREYLISTED),
        (550, Category.USER_UNKNOWN),
        (552, Category.MAILBOX_FULL),
        (554, Category.SPAM_BLOCK_IP),
        (250, Category.DELIVERED),
    ],
)
def test_greylisting_and_unknown_users_are_not_signals(at_greeting, code, category):
    assert signal_of(code, category, at_greeting=at_greeting, synthetic=False) is None


def test_a_421_after_the_greeting_is_not_a_signal_without_a_rate_limit_wording():
    """Only the greeting's 421 is about connections; later, the category decides."""
    signal = signal_of(421, Category.SERVICE_UNAVAILABLE, at_greeting=False, synthetic=False)
    assert signal is None


# -- after_signal -------------------------------------------------------------------------------


LEARNED_RATE = Limit(20, 600.0, refused_rate=640.0, changed_at=LONG_AGO)


@pytest.mark.parametrize("signal", list(Signal))
def test_a_signal_within_calm_of_the_last_decrease_changes_nothing(signal):
    use = ClusterUse(open_connections=12, sent_per_minute=700, accepted_per_minute=500)
    recent = Limit(15, 500.0, refused_connections=16, refused_rate=520.0, changed_at=T0)
    assert after_signal(recent, signal, use, T0 + RULES.calm - S, RULES) is None
    assert after_signal(recent, signal, use, T0 + RULES.calm, RULES) is not None


def test_too_many_connections_drops_to_what_was_open_when_refused():
    """The refused connection never counted: what was open is what the upstream allows."""
    use = ClusterUse(open_connections=12, sent_per_minute=300, accepted_per_minute=300)
    lowered = after_signal(Limit(20, None), Signal.CONNECTIONS, use, T0, RULES)
    assert lowered == Limit(12, None, refused_connections=12, changed_at=T0)


def test_a_connection_limit_probed_one_higher_goes_back():
    """Grown to 11 where the upstream takes 10: its eleventh is refused with ten open."""
    use = ClusterUse(open_connections=10)
    probed = Limit(11, None, refused_connections=10, changed_at=LONG_AGO)
    lowered = after_signal(probed, Signal.CONNECTIONS, use, T0, RULES)
    assert lowered is not None
    assert (lowered.connections, lowered.refused_connections) == (10, 10)


def test_too_many_connections_never_rises_above_the_limit_less_one():
    """More open than the limit (a stale count): still one under the limit it had."""
    use = ClusterUse(open_connections=30)
    lowered = after_signal(Limit(8, 300.0), Signal.CONNECTIONS, use, T0, RULES)
    assert lowered is not None
    assert lowered.connections == 7
    assert lowered.rate == 300.0  # a connection refusal says nothing about the rate


@pytest.mark.parametrize(("limit", "open_connections"), [(20, 0), (20, 1), (1, 1), (1, 0)])
def test_too_many_connections_never_drops_below_one(limit, open_connections):
    use = ClusterUse(open_connections=open_connections)
    lowered = after_signal(Limit(limit, None), Signal.CONNECTIONS, use, T0, RULES)
    assert lowered is not None
    assert lowered.connections == 1
    assert lowered.refused_connections == max(1, open_connections)


def test_too_many_messages_drops_to_backoff_of_what_was_accepted():
    use = ClusterUse(open_connections=10, sent_per_minute=560, accepted_per_minute=500)
    lowered = after_signal(LEARNED_RATE, Signal.RATE, use, T0, RULES)
    assert lowered is not None
    assert lowered.rate == pytest.approx(RULES.backoff * 500)
    assert lowered.refused_rate == 500
    assert lowered.changed_at == T0
    assert lowered.connections == LEARNED_RATE.connections  # connections are another matter


@pytest.mark.parametrize("accepted", [600.0 / RULES.backoff, 700.0, 900.0])
def test_a_limit_already_below_what_was_accepted_is_left_alone(accepted):
    """The upstream took more than the limit allows now: its refusals answer what was sent
    before the limit came down (a sliding minute refuses for up to a minute after a burst),
    and cutting on each would compound."""
    use = ClusterUse(sent_per_minute=accepted, accepted_per_minute=accepted)
    assert after_signal(LEARNED_RATE, Signal.RATE, use, T0, RULES) is None


def test_refusals_while_a_sliding_minute_drains_do_not_compound():
    """Refused every calm period while the upstream's minute still holds the burst: one cut
    to backoff of what it accepted, and no more."""
    limit, use = LEARNED_RATE, ClusterUse(sent_per_minute=640, accepted_per_minute=600)
    rates = []
    for step in range(6):
        lowered = after_signal(limit, Signal.RATE, use, T0 + step * RULES.calm, RULES)
        limit = lowered or limit
        rates.append(limit.rate)
    assert rates == [pytest.approx(RULES.backoff * 600)] * 6


@pytest.mark.parametrize("accepted", [0.0, 1.0, RULES.min_rate])
def test_too_many_messages_never_drops_below_min_rate(accepted):
    use = ClusterUse(sent_per_minute=40, accepted_per_minute=accepted)
    for limit in (LEARNED_RATE, Limit(20, None)):
        lowered = after_signal(limit, Signal.RATE, use, T0, RULES)
        if limit.rate is None and accepted == 0:
            assert lowered is None  # nothing accepted: no rate to learn from
            continue
        assert lowered is not None
        assert lowered.rate == RULES.min_rate
        assert lowered.refused_rate is not None
        assert lowered.refused_rate >= lowered.rate
    # At the floor already: nothing lower to go to.
    assert after_signal(Limit(20, RULES.min_rate), Signal.RATE, use, T0, RULES) is None


def test_a_first_rate_limit_is_learned_from_what_an_unlimited_key_had_accepted():
    use = ClusterUse(open_connections=20, sent_per_minute=800, accepted_per_minute=700)
    lowered = after_signal(Limit(20, None), Signal.RATE, use, T0, RULES)
    assert lowered == Limit(20, RULES.backoff * 700, refused_rate=700, changed_at=T0), (
        "the first limit is backoff of the accepted minute, refused at what was accepted"
    )


# -- grow ---------------------------------------------------------------------------------------


REFUSED_RATE = 600.0


def _rate_limit(rate: float, *, changed_at=LONG_AGO, grown_at=None) -> Limit:
    return Limit(20, rate, refused_rate=REFUSED_RATE, changed_at=changed_at, grown_at=grown_at)


def _busy(rate: float) -> ClusterUse:
    return ClusterUse(sent_per_minute=rate, accepted_per_minute=rate)


def test_an_unlearned_limit_does_not_grow():
    flat_out = ClusterUse(open_connections=20, sent_per_minute=900, accepted_per_minute=900)
    assert grow(Limit(20, None), flat_out, T0, RULES, GROUP) is None
    assert grow(Limit(10, 100.0), _busy(100), T0, RULES, GROUP) is None


def test_a_deep_cut_grows_fast_up_to_near_the_refused_level():
    grown = grow(_rate_limit(300), _busy(300), T0, RULES, GROUP)
    assert grown is not None
    assert grown.rate == pytest.approx(300 * RULES.fast_growth)
    assert grown.grown_at == T0
    assert grown.changed_at == LONG_AGO  # growth is not a decrease: calm is not restarted
    # One fast step does not jump past near x refused.
    grown = grow(_rate_limit(500), _busy(500), T0, RULES, GROUP)
    assert grown is not None
    assert grown.rate == pytest.approx(RULES.near * REFUSED_RATE)


@pytest.mark.parametrize("rate", [RULES.near * REFUSED_RATE, 580.0, REFUSED_RATE, 900.0])
def test_near_the_refused_level_and_beyond_the_limit_grows_slowly(rate):
    grown = grow(_rate_limit(rate), _busy(rate), T0, RULES, GROUP)
    assert grown is not None
    assert grown.rate == pytest.approx(rate * (1 + RULES.slow_growth))
    assert grown.refused_rate == REFUSED_RATE


def test_a_limit_grows_only_when_the_cluster_uses_most_of_it():
    rate = 500.0
    assert grow(_rate_limit(rate), _busy(RULES.busy_share * rate - 0.01), T0, RULES, GROUP) is None
    assert grow(_rate_limit(rate), _busy(RULES.busy_share * rate), T0, RULES, GROUP) is not None


def test_a_limit_does_not_grow_within_calm_of_a_decrease():
    rules = ShapingRules(calm=timedelta(seconds=60), grow_every=timedelta(seconds=30))
    changed = _rate_limit(300, changed_at=T0)
    assert grow(changed, _busy(300), T0 + 59 * S, rules, GROUP) is None
    assert grow(changed, _busy(300), T0 + 60 * S, rules, GROUP) is not None


def test_a_limit_does_not_grow_before_grow_every_since_its_last_change():
    since_decrease = _rate_limit(300, changed_at=T0)
    assert grow(since_decrease, _busy(300), T0 + RULES.grow_every - S, RULES, GROUP) is None
    assert grow(since_decrease, _busy(300), T0 + RULES.grow_every, RULES, GROUP) is not None
    since_growth = _rate_limit(300, grown_at=T0)
    assert grow(since_growth, _busy(300), T0 + RULES.grow_every - S, RULES, GROUP) is None
    assert grow(since_growth, _busy(300), T0 + RULES.grow_every, RULES, GROUP) is not None


def test_connections_grow_by_one_when_busy():
    limit = Limit(9, None, refused_connections=10, changed_at=LONG_AGO)
    busy = ClusterUse(open_connections=math.ceil(RULES.busy_share * 9))
    grown = grow(limit, busy, T0, RULES, GROUP)
    assert grown is not None
    assert (grown.connections, grown.refused_connections) == (10, 10)
    idle = ClusterUse(open_connections=math.ceil(RULES.busy_share * 9) - 1)
    assert grow(limit, idle, T0, RULES, GROUP) is None


def test_a_rate_grown_to_lift_at_times_the_refused_level_is_lifted():
    rate = RULES.lift_at * REFUSED_RATE / (1 + RULES.slow_growth) + 0.01
    grown = grow(_rate_limit(rate), _busy(rate), T0, RULES, GROUP)
    assert grown is not None
    assert (grown.rate, grown.refused_rate) == (None, None)  # back to the ceiling: none
    just_below = _rate_limit(rate - 0.02)
    grown = grow(just_below, _busy(rate), T0, RULES, GROUP)
    assert grown is not None
    assert grown.refused_rate == REFUSED_RATE


def test_connections_grown_to_lift_at_times_the_refused_level_are_lifted():
    limit = Limit(9, None, refused_connections=5, changed_at=LONG_AGO)
    grown = grow(limit, ClusterUse(open_connections=9), T0, RULES, GROUP)
    assert grown is not None
    assert (grown.connections, grown.refused_connections) == (RULES.connections, None)
    assert not grown.learned


def test_a_connection_limit_learned_at_one_is_not_lifted_by_its_first_probe():
    """At one connection, lift_at x the level is the probe itself: an upstream that allows
    one would be flooded with twenty every grow_every."""
    limit = Limit(1, None, refused_connections=1, changed_at=LONG_AGO)
    grown = grow(limit, ClusterUse(open_connections=1), T0, RULES, GROUP)
    assert grown is not None
    assert (grown.connections, grown.refused_connections) == (2, 1)
    again = grow(grown, ClusterUse(open_connections=2), T0 + RULES.grow_every, RULES, GROUP)
    assert again is not None and (again.connections, again.refused_connections) == (
        RULES.connections,
        None,
    )


def test_the_ceilings_of_a_group_rule_win_over_the_defaults():
    rules = ShapingRules(
        connections=20, rate=None, groups={"google": (8, 1000.0), "slow.example": (None, 60.0)}
    )
    assert rules.ceiling("google") == (8, 1000.0)
    assert rules.ceiling("slow.example") == (20, 60.0)
    assert rules.ceiling("anything.else") == (20, None)
    assert Limit.ceiling_of(rules, "google") == Limit(8, 1000.0)
    # A rate growing past the group's ceiling stops at it, and is no longer learned.
    limit = Limit(8, 990.0, refused_connections=4, refused_rate=600.0, changed_at=LONG_AGO)
    grown = grow(limit, ClusterUse(open_connections=8, sent_per_minute=990), T0, rules, "google")
    assert grown is not None
    assert (grown.rate, grown.refused_rate) == (1000.0, None)
    # Connections at the group's ceiling do not grow past it.
    assert grown.connections == 8


# -- connection_share ---------------------------------------------------------------------------


def _relays(rng: random.Random) -> list[str]:
    return [f"relay-{i}" for i in range(rng.randint(1, 7))]


def _wanted(rng: random.Random, relays: list[str]) -> dict[str, float]:
    """Starts a minute: nothing, a little, a lot, fractions, ties."""
    choices = [
        lambda: 0.0,
        lambda: rng.uniform(0.0, 3.0),
        lambda: rng.uniform(0.0, 5000.0),
        lambda: float(rng.randint(1, 60)),
        lambda: 600.0,
    ]
    return {relay: rng.choice(choices)() for relay in relays}


@pytest.mark.parametrize("seed", range(400))
def test_connection_shares_never_sum_past_the_limit(seed):
    """Rounds in turn (as the store's lock orders them), each relay holding what it was last
    given: the sum of what is held never passes the limit, whatever the demands do. And all
    relays computing from one snapshot (held: the shares of the round before) never give
    away more than the limit either."""
    rng = random.Random(seed)
    relays = _relays(rng)
    limit = rng.randint(1, 40)
    held = dict.fromkeys(relays, 0)
    for _ in range(12):
        wanted = _wanted(rng, relays)
        snapshot = dict(held)
        from_snapshot = {
            relay: connection_share(limit, relay, wanted, snapshot) for relay in relays
        }
        assert sum(from_snapshot.values()) <= limit, (limit, wanted, snapshot, from_snapshot)
        for relay in rng.sample(relays, len(relays)):
            share = connection_share(limit, relay, wanted, held)
            others = sum(n for other, n in held.items() if other != relay)
            assert 0 <= share <= max(0, limit - others)
            held[relay] = share
            assert sum(held.values()) <= limit, (limit, wanted, held)


def test_a_share_never_takes_what_the_others_hold():
    wanted = {"a": 100.0, "b": 100.0, "c": 100.0}
    assert connection_share(21, "a", wanted, {}) == 7
    assert connection_share(21, "a", wanted, {"b": 7, "c": 7}) == 7
    assert connection_share(21, "a", wanted, {"b": 10, "c": 8}) == 3
    assert connection_share(21, "a", wanted, {"b": 15, "c": 15}) == 0  # over: none, not less
    # What this relay itself held last round is no one else's.
    assert connection_share(21, "a", wanted, {"a": 21, "b": 7}) == 7
    # A relay wanting nothing still holds what it holds, until its next round gives it back.
    assert connection_share(21, "a", {"a": 100.0, "d": 0.0}, {"d": 5}) == 16


@pytest.mark.parametrize("seed", range(200))
def test_every_relay_that_wants_gets_one_while_there_are_enough(seed):
    rng = random.Random(seed)
    relays = _relays(rng)
    wanted = {relay: rng.choice([0.01, 1.0, 1e6, rng.uniform(0.001, 1e5)]) for relay in relays}
    for limit in range(len(relays), len(relays) + 5):
        shares = {relay: connection_share(limit, relay, wanted, {}) for relay in relays}
        assert min(shares.values()) >= 1, (limit, wanted, shares)
        assert sum(shares.values()) == limit


def test_shares_follow_what_each_relay_wants_and_nothing_goes_to_one_wanting_nothing():
    wanted = {"a": 300.0, "b": 100.0, "c": 0.0}
    shares = {relay: connection_share(20, relay, wanted, {}) for relay in wanted}
    # One each, then 18 split 3:1 (13.5, 4.5): the unit left over goes to the largest
    # remainder, a tie to the first name.
    assert shares == {"a": 15, "b": 5, "c": 0}
    assert connection_share(20, "z", wanted, {}) == 0  # not asking at all


def test_too_few_connections_for_every_relay_go_by_demand():
    wanted = {"a": 10.0, "b": 30.0, "c": 60.0}
    shares = {relay: connection_share(2, relay, wanted, {}) for relay in wanted}
    assert sum(shares.values()) == 2
    assert shares["c"] >= shares["b"] >= shares["a"]


@pytest.mark.parametrize("seed", range(200))
def test_relays_computing_from_one_snapshot_agree(seed):
    """Every relay computes every relay's share alike (largest remainders, ties by name): the
    shares, computed by each relay for itself, add up to the limit exactly."""
    rng = random.Random(seed)
    relays = _relays(rng)
    limit = rng.randint(1, 40)
    wanted = _wanted(rng, relays)
    wanted[relays[0]] = max(wanted[relays[0]], 1.0)  # someone asks
    shares = [connection_share(limit, relay, wanted, {}) for relay in relays]
    assert sum(shares) == limit, (limit, wanted, shares)


def test_shares_do_not_depend_on_the_order_relays_are_listed_in():
    limit, demands = 12, {"a": 2.8, "b": 2.0, "c": 0.9}
    in_settles_order = {}
    for me, mine in demands.items():
        wanted = {relay: w for relay, w in demands.items() if relay != me}
        wanted[me] = mine  # as settle() builds it: the others, then this relay
        in_settles_order[me] = connection_share(limit, me, wanted, {})
    assert sum(in_settles_order.values()) <= limit, in_settles_order
    for order in itertools.permutations(demands):
        wanted = {relay: demands[relay] for relay in order}
        assert {me: connection_share(limit, me, wanted, {}) for me in demands} == (in_settles_order)


# -- rate_share ---------------------------------------------------------------------------------


def test_no_rate_limit_is_no_rate_share():
    assert rate_share(None, "a", {"a": 100.0, "b": 5.0}) is None


@pytest.mark.parametrize("seed", range(300))
def test_rate_shares_never_sum_past_the_rate_and_are_max_min_fair(seed):
    rng = random.Random(seed)
    relays = _relays(rng)
    rate = rng.choice([RULES.min_rate, 60.0, 600.0, rng.uniform(1.0, 10_000.0)])
    wanted = _wanted(rng, relays)
    shares = {relay: rate_share(rate, relay, wanted) for relay in relays}
    given = [share for share in shares.values() if share is not None]
    assert len(given) == len(relays)
    assert all(share >= 0 for share in given)
    assert sum(given) <= rate * (1 + 1e-9), (rate, wanted, shares)
    top = max(relays, key=lambda relay: (wanted[relay], relay))
    equal_part = rate / len(relays)
    for relay in relays:
        share = shares[relay]
        assert share is not None
        # Nobody gets less than the lesser of what it wants and an equal part ...
        assert share >= min(wanted[relay], equal_part) * (1 - 1e-9)
        if relay != top:
            # ... and, except the most demanding (who takes what nobody wants), never more
            # than it wants.
            assert share <= wanted[relay] * (1 + 1e-9) + 1e-9
    if all(w > 0 for w in wanted.values()):
        assert sum(given) == pytest.approx(rate)  # nothing is left over while all want


def test_a_relay_wanting_less_than_an_equal_part_gets_what_it_wants_and_leaves_the_rest():
    wanted = {"a": 50.0, "b": 500.0, "c": 1000.0}
    shares = {relay: rate_share(600.0, relay, wanted) for relay in wanted}
    assert shares == {"a": 50.0, "b": 275.0, "c": 275.0}


def test_the_most_demanding_relay_takes_what_nobody_else_wants():
    wanted = {"a": 10.0, "b": 20.0}
    assert rate_share(600.0, "a", wanted) == 10.0
    assert rate_share(600.0, "b", wanted) == 590.0  # a backlog that just arrived
    assert rate_share(600.0, "a", {"a": 1.0}) == 600.0
    assert rate_share(600.0, "c", wanted) == 0.0  # not asking: nothing until it does


# -- settle -------------------------------------------------------------------------------------


def _described(changes: tuple[Change, ...]) -> list[tuple[object, ...]]:
    return [(c.what, c.old, c.new, c.cause, c.reply) for c in changes]


def test_settle_holds_a_stored_limit_under_a_lowered_ceiling():
    rules = ShapingRules(groups={"google": (8, 500.0)})
    stored = Limit(15, 900.0, refused_connections=16, refused_rate=1000.0, changed_at=LONG_AGO)
    quiet = RelayUse(held=1, open_connections=1, sent=10, accepted=10, wanted=10)
    settled = settle(stored, [], "a", quiet, {}, T0, rules, "google")
    assert (settled.limit.connections, settled.limit.rate) == (8, 500.0)
    assert (settled.connections, settled.rate) == (8, 500.0)
    assert not settled.changed  # the ceiling, not the upstream, moved: no change to log


def test_settle_starts_an_unlearned_key_at_todays_ceiling():
    rules = ShapingRules(connections=12, rate=300.0)
    stale = Limit(20, 900.0)  # stored under an older config, never learned
    settled = settle(stale, [], "a", RelayUse(wanted=5), {}, T0, rules, GROUP)
    assert settled.limit == Limit(12, 300.0)
    assert settle(None, [], "a", RelayUse(), {}, T0, rules, GROUP).limit == Limit(12, 300.0)


def test_settle_lowers_a_refused_limit_and_records_the_reply():
    reply = "451 4.7.28 Our system has detected an unusual rate of unsolicited mail"
    mine = RelayUse(held=7, open_connections=6, sent=400, accepted=380, wanted=900)
    other = RelayUse(held=7, open_connections=7, sent=300, accepted=320, wanted=900)
    settled = settle(None, [(Signal.RATE, reply)], "a", mine, {"b": other}, T0, RULES, GROUP)
    expected = RULES.backoff * 700
    assert _described(settled.changes) == [
        ("rate", None, pytest.approx(expected), "refused", reply)
    ]
    assert settled.limit.rate == pytest.approx(expected)
    assert settled.limit.changed_at == T0
    assert settled.rate == pytest.approx(expected / 2)  # two relays wanting alike
    assert settled.connections == 10  # one each, then 18 halved; b's 7 leave 13 free


def test_settle_lowers_connections_on_a_refused_greeting():
    reply = "421 4.7.0 Too many concurrent SMTP connections from this IP"
    mine = RelayUse(held=10, open_connections=9, wanted=600)
    other = RelayUse(held=10, open_connections=9, wanted=600)
    settled = settle(None, [(Signal.CONNECTIONS, reply)], "a", mine, {"b": other}, T0, RULES, GROUP)
    assert settled.changes == (Change("connections", 20, 18, "refused", reply),)
    assert settled.connections == 18 - 10  # its part is 9, but b still holds its 10


def test_settle_applies_one_decrease_a_round():
    """Replies in one round answer the same traffic: the first lowers, the rest are calm."""
    signals = [(Signal.RATE, "451 first"), (Signal.RATE, "451 second")]
    use = RelayUse(held=20, open_connections=20, sent=800, accepted=700, wanted=1200)
    settled = settle(None, signals, "a", use, {}, T0, RULES, GROUP)
    assert [c.reply for c in settled.changes] == ["451 first"]
    assert settled.limit.rate == pytest.approx(RULES.backoff * 700)


def test_settle_records_growth_and_lift():
    busy = RelayUse(held=20, open_connections=20, sent=300, accepted=300, wanted=900)
    settled = settle(_rate_limit(300), [], "a", busy, {}, T0, RULES, GROUP)
    assert _described(settled.changes) == [
        ("rate", 300.0, pytest.approx(300 * RULES.fast_growth), "grew", "")
    ]
    near_lift = RULES.lift_at * REFUSED_RATE - 1
    busy = RelayUse(held=20, open_connections=20, sent=near_lift, wanted=2000)
    settled = settle(_rate_limit(near_lift), [], "a", busy, {}, T0, RULES, GROUP)
    assert settled.changes == (Change("rate", near_lift, None, "lifted", ""),)
    assert settled.rate is None
    assert not settled.limit.learned


def test_settle_gives_this_relay_a_share_even_before_its_minute_counts_it():
    """A relay whose demand has not reached its minute's count yet still asks now."""
    other = RelayUse(held=5, open_connections=5, sent=300, accepted=300, wanted=300)
    limit = Limit(10, 300.0, refused_rate=400.0, changed_at=T0)
    settled = settle(limit, [], "new", RelayUse(), {"old": other}, T0, RULES, GROUP)
    assert settled.connections >= 1
    assert settled.rate is not None
    assert settled.rate > 0


# -- group_of -----------------------------------------------------------------------------------


def test_a_providers_mx_hosts_are_one_group_and_any_other_host_its_own():
    assert group_of("alt1.aspmx.l.google.com.") == "google"
    assert group_of("gmail-smtp-in.l.google.com") == "google"
    assert group_of("example-com.mail.protection.outlook.com") == "microsoft"
    assert group_of(" MX1.Example.ORG. ") == "mx1.example.org"
    assert group_of("mx2.example.org") != group_of("mx1.example.org")


# -- three relays against an upstream that enforces its limits ----------------------------------

UPSTREAM_CONNECTIONS = 20  # concurrent connections per source IP
UPSTREAM_RATE = 600  # messages accepted per sliding 60 s per source IP
TRANSACTION = 1.5  # seconds a delivered message holds its connection
REFUSED_AT_MAIL = 0.5  # seconds until a rate refusal (at MAIL FROM) closes the connection
REFUSED_AT_GREETING = 0.1  # seconds until a refused greeting closes the connection
CONNECTION_WAIT = 30.0  # a started transaction waits this long for a connection, at most
WORKERS = 100  # transactions a relay has in flight or waiting ([delivery] concurrency)
SIMULATED_MINUTES = 20
SETTLED_BY_MINUTE = 10


class _Measure:
    """Events a minute over the sliding minute, as a relay writes them for the others; a key
    younger than a minute is measured over its age (five seconds at least)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.since: float | None = None

    def add(self, at: float) -> None:
        if self.since is None:
            self.since = at
        self.times.append(at)

    def per_minute(self, now: float) -> float:
        while self.times and self.times[0] <= now - 60:
            self.times.popleft()
        if self.since is None:
            return 0.0
        age = now - self.since
        return len(self.times) * 60 / max(age, 5.0) if age < 60 else float(len(self.times))


@dataclass
class _Relay:
    name: str
    asks_per_second: int  # its workers' demand: a large backlog never runs out
    connections: int = 0  # its share, from its last round (none before its first)
    rate: float | None = None
    in_flight: int = 0
    tokens: float = 0.0
    waiting: deque[float] = field(default_factory=deque)  # started, waiting for a connection
    signals: list[tuple[Signal, str]] = field(default_factory=list)
    sent: _Measure = field(default_factory=_Measure)
    accepted: _Measure = field(default_factory=_Measure)
    wanted: _Measure = field(default_factory=_Measure)

    def use(self, now: float) -> RelayUse:
        return RelayUse(
            held=self.connections,
            open_connections=self.in_flight,
            sent=self.sent.per_minute(now),
            accepted=self.accepted.per_minute(now),
            wanted=self.wanted.per_minute(now),
        )


@dataclass
class _Minute:
    accepted: int = 0
    refused_at_greeting: int = 0
    refused_rate: int = 0
    most_connections: int = 0
    limit_connections: int = 0
    limit_rate: float | None = None

    @property
    def refused(self) -> int:
        return self.refused_at_greeting + self.refused_rate

    @property
    def transactions(self) -> int:
        return self.accepted + self.refused


@dataclass
class _Simulation:
    minutes: list[_Minute]
    most_connections: int  # the cluster's, at any instant (nothing starts before a round)
    changes: list[tuple[float, Change]]

    def table(self) -> str:
        lines = ["minute accepted refused(greeting,rate) max_conns limit(conns,rate)"]
        for i, m in enumerate(self.minutes, 1):
            rate = "none" if m.limit_rate is None else f"{m.limit_rate:.0f}"
            lines.append(
                f"{i:6} {m.accepted:8} {m.refused:7}({m.refused_at_greeting},{m.refused_rate})"
                f" {m.most_connections:9} {m.limit_connections},{rate}"
            )
        return "\n".join(lines)


def _simulate(
    seed: int, rules: ShapingRules, upstream_connections: int = UPSTREAM_CONNECTIONS
) -> _Simulation:
    """Three relays, each with a large backlog for one key, against an upstream that refuses
    a connection past its ``upstream_connections``-th (421 at the greeting) and a message past
    600 in any 60 s (451 after MAIL FROM). Each relay settles once a simulated second, in an
    order the store's lock happens to give, with the other relays' use as they last wrote it
    (``held``: the larger of its share and what it has open, as the worker writes it). Its
    workers ask to start 10 to 30 transactions a second (its own demand, with jitter); it
    starts them by its shares: its rate share spread evenly over the second (a token clock
    with a second's burst), then a connection of its share, waited for up to 30 s with at
    most ``WORKERS`` in flight or waiting. Like the worker, a throttling reply slows the relay
    at once; the next round makes it the cluster's."""
    rng = random.Random(seed)
    relays = [_Relay(f"relay-{name}", rng.randint(10, 30)) for name in "abc"]
    stored: Limit | None = None
    written: dict[str, RelayUse] = {}
    upstream_open = 0
    upstream_taken: deque[float] = deque()  # when each message of the last 60 s was taken
    events: list[tuple[float, int, str, _Relay, str]] = []  # when, order, what, who, outcome
    order = itertools.count()
    minutes = [_Minute() for _ in range(SIMULATED_MINUTES)]
    changes: list[tuple[float, Change]] = []
    most_connections = 0

    def minute_of(at: float) -> _Minute:
        return minutes[min(int(at // 60), SIMULATED_MINUTES - 1)]

    def start(relay: _Relay, at: float) -> None:
        nonlocal upstream_open, most_connections
        relay.in_flight += 1
        relay.sent.add(at)
        held = sum(r.in_flight for r in relays)
        most_connections = max(most_connections, held)
        minute_of(at).most_connections = max(minute_of(at).most_connections, held)
        if upstream_open >= upstream_connections:
            heapq.heappush(events, (at + REFUSED_AT_GREETING, next(order), "end", relay, "421"))
            return
        upstream_open += 1
        while upstream_taken and upstream_taken[0] <= at - 60:
            upstream_taken.popleft()
        if len(upstream_taken) >= UPSTREAM_RATE:
            heapq.heappush(events, (at + REFUSED_AT_MAIL, next(order), "end", relay, "451"))
            return
        upstream_taken.append(at)
        heapq.heappush(events, (at + TRANSACTION, next(order), "end", relay, "250"))

    def start_waiting(relay: _Relay, at: float) -> None:
        while relay.waiting and relay.waiting[0] < at - CONNECTION_WAIT:
            relay.waiting.popleft()  # handed back: it asks again later
        while relay.waiting and relay.in_flight < relay.connections:
            relay.waiting.popleft()
            start(relay, at)

    def end(relay: _Relay, at: float, outcome: str) -> None:
        nonlocal upstream_open
        relay.in_flight -= 1
        minute = minute_of(at)
        if outcome == "421":
            minute.refused_at_greeting += 1
            signal = signal_of(421, Category.OTHER, at_greeting=True, synthetic=False)
            reply = "421 4.7.0 Too many connections from your IP"
        else:
            upstream_open -= 1
            if outcome == "250":
                minute.accepted += 1
                relay.accepted.add(at)
                signal, reply = None, ""
            else:
                minute.refused_rate += 1
                signal = signal_of(451, Category.RATE_LIMITED, at_greeting=False, synthetic=False)
                reply = "451 4.7.28 Too many messages from your IP, slow down"
        if signal is not None:
            relay.signals.append((signal, reply))
            # As the worker does: slow down here at once, the next round makes it the cluster's.
            if signal is Signal.RATE and relay.rate is not None:
                relay.rate *= rules.backoff
            elif signal is Signal.CONNECTIONS:
                relay.connections = min(relay.connections, relay.in_flight)
        start_waiting(relay, at)

    def run_until(until: float) -> None:
        while events and events[0][0] <= until:
            at, _, what, relay, outcome = heapq.heappop(events)
            if what == "end":
                end(relay, at, outcome)
            elif relay.in_flight + len(relay.waiting) < WORKERS:
                relay.waiting.append(at)
                start_waiting(relay, at)

    for tick in range(SIMULATED_MINUTES * 60):
        second = float(tick)
        run_until(second)
        now = T0 + tick * S
        for relay in rng.sample(relays, len(relays)):
            mine = relay.use(second)
            others = {name: use for name, use in written.items() if name != relay.name}
            result = settle(stored, relay.signals, relay.name, mine, others, now, rules, GROUP)
            relay.signals.clear()
            if result.changed:
                stored = result.limit
                changes += [(second, change) for change in result.changes]
            relay.connections, relay.rate = result.connections, result.rate
            written[relay.name] = RelayUse(
                max(result.connections, mine.open_connections),
                mine.open_connections,
                mine.sent,
                mine.accepted,
                mine.wanted,
            )
            start_waiting(relay, second)
        limit = stored or Limit.ceiling_of(rules, GROUP)
        minute_of(second).limit_connections = limit.connections
        minute_of(second).limit_rate = limit.rate
        for relay in relays:
            asks = relay.asks_per_second + rng.randint(-2, 2)
            for k in range(asks):
                relay.wanted.add(second + k / asks)
            if relay.rate is None:
                starts = asks
            else:
                per_second = relay.rate / 60
                relay.tokens = min(relay.tokens + per_second, per_second + 1)  # 1 s burst
                starts = min(asks, math.floor(relay.tokens))
                relay.tokens -= starts
            for k in range(starts):
                at = second + (k + 0.5) / starts
                heapq.heappush(events, (at, next(order), "start", relay, ""))
        run_until(second + 1 - 1e-9)
    return _Simulation(minutes, most_connections, changes)


def _refused_share(minutes: list[_Minute]) -> float:
    return sum(m.refused for m in minutes) / max(1, sum(m.transactions for m in minutes))


def _steady_from(minutes: list[_Minute]) -> int:
    """The first minute (from 1) from which on every minute accepted 600 +- 10 % and under
    1 % of the transactions were refused; past the end when there is none. (Accepted alone
    cannot tell: the upstream never takes more than 600 a minute, refusing or not.)"""
    for first in range(1, len(minutes) + 1):
        after = minutes[first - 1 :]
        in_band = all(0.9 * UPSTREAM_RATE <= m.accepted <= 1.1 * UPSTREAM_RATE for m in after)
        if in_band and _refused_share(after) < 0.01:
            return first
    return len(minutes) + 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_relays_settle_on_what_the_upstream_allows(seed):
    """The rate is learned from the upstream's refusals within minutes and then held within
    10 % of it, the cluster never opens more connections than the limit, and once settled
    fewer than 1 % of the transactions are refused (the probing above the learned level)."""
    sim = _simulate(seed, RULES)
    table = sim.table()
    steady = _steady_from(sim.minutes)
    assert steady <= SETTLED_BY_MINUTE, f"not steady by minute {SETTLED_BY_MINUTE}:\n{table}"
    assert sim.most_connections <= UPSTREAM_CONNECTIONS, table
    assert sum(m.refused_at_greeting for m in sim.minutes) == 0, table


def test_three_relays_learn_an_upstreams_connection_limit():
    """An upstream taking 10 connections (400 transactions a minute at 1.5 s each) where the
    ceiling is 20: the limit is learned at the first refusals and then probed one over, once
    every grow_every; the transactions go at 90 % of what the upstream allows or more."""
    upstream_connections = 10
    capacity = upstream_connections * 60 / TRANSACTION
    sim = _simulate(1, RULES, upstream_connections)
    table = sim.table()
    after_first = sim.minutes[1:]
    assert all(m.accepted >= 0.9 * capacity for m in after_first), table
    assert all(m.most_connections <= upstream_connections + 1 for m in after_first), table
    assert _refused_share(after_first) < 0.01, table
    assert {m.limit_connections for m in after_first} <= {
        upstream_connections - 1,
        upstream_connections,
        upstream_connections + 1,
    }, table

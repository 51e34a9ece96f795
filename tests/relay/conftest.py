"""Fixtures of the relay tier, shared across its modules."""

from tests.relay.test_delivery import clock, db, start_relay, upstream  # noqa: F401

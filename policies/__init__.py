"""bounce-relay's functional core: pure functions and frozen dataclasses.

Nothing in this package performs I/O, reads the clock, touches asyncio or the
database, or imports ``relay``. Time and randomness arrive as parameters, so
every decision here is testable with plain values.
"""

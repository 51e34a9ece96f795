"""Bounce parsing on hostile input: each shape that used to be quadratic, at two sizes.

For every shape of ``tests/support/hostile_bounces.py`` (and the two header shapes intake
reads on its event loop), times ``parse_bounce`` (``summarise_headers`` and
``count_received``) on a message of ``--small`` and of ``--large`` bytes, best of
``--repeat``, and prints the ratio: linear time gives about large/small (10 for the default
200 KB and 2 MB), quadratic a hundred. One line per shape, then a summary:

    python bench/dsn_parse_bench.py
    dsn_parse_bench kind=bounce shape=html_unclosed_script small_bytes=202927 ... ratio=...
    ...
    dsn_parse_bench_summary shapes=18 size_ratio=10.0 worst_shape=... worst_ratio=...

``--smoke`` runs 20 KB and 200 KB once each (the smoke test in tests/e2e).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.dsn import MalformedBounce, NotAMessage, parse_bounce
from policies.headers import count_received, summarise_headers
from tests.support.hostile_bounces import HEADER_SHAPES, SHAPES


def _parse(raw: bytes) -> None:
    with contextlib.suppress(NotAMessage, MalformedBounce):
        parse_bounce(raw)


def _summarise(raw: bytes) -> None:
    summarise_headers(raw, "X-Campaign-ID")
    count_received(raw)


def _best(read: Callable[[bytes], None], raw: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        read(raw)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--small", type=int, default=200_000, help="bytes (default 200 KB)")
    parser.add_argument("--large", type=int, default=2_000_000, help="bytes (default 2 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size, best kept")
    parser.add_argument("--smoke", action="store_true", help="20 KB and 200 KB, one run each")
    args = parser.parse_args()
    if args.smoke:
        args.small, args.large, args.repeat = 20_000, 200_000, 1
    cases = [("bounce", name, build, _parse) for name, build in SHAPES.items()]
    cases += [("header", name, build, _summarise) for name, build in HEADER_SHAPES.items()]
    worst = ("", 0.0)
    for kind, name, build, read in cases:
        small, large = build(args.small), build(args.large)
        small_s, large_s = _best(read, small, args.repeat), _best(read, large, args.repeat)
        ratio = large_s / max(small_s, 1e-6)
        worst = max(worst, (name, ratio), key=lambda w: w[1])
        print(
            f"dsn_parse_bench kind={kind} shape={name} small_bytes={len(small)} "
            f"large_bytes={len(large)} small_s={small_s:.4f} large_s={large_s:.4f} "
            f"ratio={ratio:.1f}",
            flush=True,
        )
    print(
        f"dsn_parse_bench_summary shapes={len(cases)} size_ratio={args.large / args.small:.1f} "
        f"worst_shape={worst[0]} worst_ratio={worst[1]:.1f}"
    )


if __name__ == "__main__":
    main()

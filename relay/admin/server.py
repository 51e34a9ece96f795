"""HTTP listener on ``[admin] listen``, served by aiohttp in the relay's own event loop.

/metrics   Prometheus text format (always on, even without an admin password)
/healthz   200 while the process runs
/readyz    200 when the database answers and the SMTP listener accepts; else 503
/api/v1/   the JSON API (relay/admin/api.py), when [[admin.tokens]] are configured
/report, /suppression, /queue, /profile   the admin page (relay/admin/pages.py), when
           [admin] password_hash is set
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relay.admin.api import add_api_routes
from relay.admin.pages import add_page_routes
from relay.clock import Clock, utc_now
from relay.config import AdminToken
from relay.errors import ListenError, StoreError
from relay.metrics import Metrics
from relay.store import Store

__all__ = ["start_admin"]

log = structlog.get_logger("relay.admin")


def _app(
    store: Store,
    metrics: Metrics,
    serving: Callable[[], bool],
    tokens: tuple[AdminToken, ...],
    password_hash: str = "",
    clock: Clock = utc_now,
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        try:
            await store.ping()
        except StoreError as exc:
            problems.append(f"database: {exc}")
        if not serving():
            problems.append("smtp listener: not accepting")
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ready\n")

    async def scrape(request: web.Request) -> web.Response:
        try:
            stats = await store.queue_stats()
        except StoreError as exc:
            log.warning("metrics.queue_unavailable", error=str(exc))
        else:
            now = clock()
            for state in ("queued", "inflight"):
                metrics.queue_depth.labels(state).set(stats.get(state, (0, None))[0])
            oldest = stats.get("queued", (0, None))[1]
            metrics.oldest_queued.set((now - oldest).total_seconds() if oldest else 0)
        size, idle = store.pool_sizes()
        metrics.db_pool.labels("open").set(size)
        metrics.db_pool.labels("idle").set(idle)
        metrics.db_pool.labels("in_use").set(size - idle)
        body = metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)
    if tokens:
        add_api_routes(app, store, tokens, clock)
    if password_hash:
        add_page_routes(app, store, password_hash, clock)
    return app


async def start_admin(
    store: Store,
    metrics: Metrics,
    serving: Callable[[], bool],
    listen: tuple[str, int],
    tokens: tuple[AdminToken, ...] = (),
    password_hash: str = "",
    clock: Clock = utc_now,
) -> tuple[web.AppRunner, int]:
    """Start listening; return the runner (to clean up) and the bound port."""
    runner = web.AppRunner(
        _app(store, metrics, serving, tokens, password_hash, clock), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, listen[0], listen[1])
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError("admin.listen", listen, exc) from exc
    port = int(runner.addresses[0][1])
    log.info("admin.listening", address=listen[0], port=port)
    return runner, port

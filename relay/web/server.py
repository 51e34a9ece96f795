"""HTTP listener on ``[admin] listen``, served by aiohttp in the relay's own event loop.

/metrics   Prometheus text format (always on, even without an admin password)
/healthz   200 while the process runs
/readyz    200 when the database answers and the SMTP listener accepts; else 503
/api/v1/   the JSON API (relay/web/api.py), when [[admin.tokens]] are configured
/report, /suppression, /queue, /incidents, /profile   the admin page (relay/web/pages/):
           named accounts (`bounce-relay admin user add`), or the shared
           [admin] password_hash until the first account exists

Every answer carries headers that keep it out of frames, caches and MIME sniffing (see
``SECURITY_HEADERS``). The client a request comes from is its peer address, or, when the
peer is one of ``[admin] trusted_proxies``, the right-most X-Forwarded-For address that is
not itself a trusted proxy (and X-Forwarded-Proto says the scheme); handlers see it as
``request.remote`` / ``request.scheme``. From any other peer those headers are ignored, so a
client cannot choose the address its failed logins are counted against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from relay.clock import Clock, utc_now
from relay.config import AdminToken, Rules
from relay.errors import ListenError, StoreError
from relay.metrics import Metrics
from relay.store import Store
from relay.web.api import add_api_routes
from relay.web.pages import add_page_routes

__all__ = ["SECURITY_HEADERS", "forwarded_client", "start_admin"]

log = structlog.get_logger("relay.admin")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The pages load nothing but their own stylesheet (/admin.css) and run no script; no page may
# be framed (clickjacking the Remove and Release buttons); nothing an admin saw stays in a
# cache. Referrer-Policy is same-origin, not no-referrer: with no-referrer browsers send
# "Origin: null" on form POSTs, which the pages' origin check must refuse.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in proxies)


def forwarded_client(peer: str, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str:
    """The client behind ``peer``: walk X-Forwarded-For from the right while the hop so far is
    a trusted proxy. Entries left of the first untrusted one were written by the client
    and are ignored; an entry that is not an address stops the walk at the last proxy."""
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    client = peer
    while hops and _trusted(client, proxies):
        try:
            client = str(ipaddress.ip_address(hops.pop()))
        except ValueError:
            break
    return client


def _behind_proxies(proxies: Sequence[Network]) -> Middleware:
    @web.middleware
    async def resolve_client(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        if not _trusted(peer, proxies):
            return await handler(request)
        client = forwarded_client(peer, request.headers.getall("X-Forwarded-For", []), proxies)
        proto = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower()
        scheme = proto if proto in ("http", "https") else request.scheme
        return await handler(request.clone(remote=client, scheme=scheme))

    return resolve_client


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _app(
    store: Store,
    metrics: Metrics,
    serving: Callable[[], bool],
    tokens: tuple[AdminToken, ...],
    password_hash: str = "",
    clock: Clock = utc_now,
    trusted_proxies: Sequence[Network] = (),
    rules: Callable[[], Rules] | None = None,
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

    app = web.Application(middlewares=[_behind_proxies(trusted_proxies)])
    app.on_response_prepare.append(_harden)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)
    if tokens:
        add_api_routes(app, store, tokens, clock)
    # Always: accounts live in the database and may be added while the relay runs.
    add_page_routes(app, store, password_hash, clock, rules)
    return app


async def start_admin(
    store: Store,
    metrics: Metrics,
    serving: Callable[[], bool],
    listen: tuple[str, int],
    tokens: tuple[AdminToken, ...] = (),
    password_hash: str = "",
    clock: Clock = utc_now,
    trusted_proxies: Sequence[Network] = (),
    rules: Callable[[], Rules] | None = None,
) -> tuple[web.AppRunner, int]:
    """Start listening; return the runner (to clean up; ``runner.app`` is the application)
    and the bound port."""
    runner = web.AppRunner(
        _app(store, metrics, serving, tokens, password_hash, clock, trusted_proxies, rules),
        access_log=None,
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

"""Lifecycle of one relay process: store -> committer -> intake -> (delivery).

``Relay`` is an async context manager: entering starts everything in order,
leaving tears it down in reverse. ``serve`` adds signal handling: SIGTERM and
SIGINT stop accepting, let sessions in DATA finish their commit, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from contextlib import AsyncExitStack
from types import TracebackType

import structlog
from aiohttp import web

from relay.clock import Clock, utc_now
from relay.config import Config, Rules, load_config
from relay.delivery.guardrails import GuardrailGate, GuardrailWatch
from relay.delivery.incidents import IncidentWatch
from relay.delivery.shaping import Shaper
from relay.delivery.upstream import Upstream
from relay.delivery.worker import DeliveryWorker
from relay.errors import ConfigErrors
from relay.intake.bounces import BounceReader
from relay.intake.commit import GroupCommitter
from relay.intake.server import IntakeHandler, start_intake
from relay.metrics import Metrics
from relay.ops import systemd
from relay.ops.maintenance import keep_data_lifecycle, vacuum_while_autovacuum_is_off
from relay.ops.supervisor import ProcessRole, signal_ready
from relay.store import Store, create_store
from relay.store.embedded import EmbeddedPostgres
from relay.web.server import start_admin
from relay.webhooks import WebhookSender, sync_subscriptions

__all__ = ["Relay", "open_store", "serve"]

log = structlog.get_logger("relay.app")

SHUTDOWN_GRACE_SECONDS = 30.0


async def open_store(
    config: Config,
    stack: AsyncExitStack,
    *,
    dsn: str | None = None,
    migrate: bool = True,
    queue_pool: bool = False,
) -> Store:
    """Connect to ``dsn`` / ``[store] dsn``, or start the embedded server; migrate.
    ``queue_pool``: a relay that serves (``relay.store.create_store``)."""
    dsn = dsn or config.store.dsn
    if not dsn:
        embedded = EmbeddedPostgres(config.store.data_dir)
        dsn = await asyncio.to_thread(embedded.start)
        stack.callback(embedded.stop)
        log.info("store.embedded_started", pgdata=str(embedded.pgdata))
    store = await create_store(
        dsn,
        min_size=config.store.pool_min_size,
        max_size=config.store.pool_max_size,
        queue_pool=queue_pool,
    )
    stack.push_async_callback(store.close)
    await store.check_durability()
    if migrate:
        applied = await store.migrate()
        log.info("store.ready", migrations_applied=applied)
    return store


class Relay:
    """One running relay. ``listen`` overrides ``[smtp] listen`` (tests use port 0)."""

    def __init__(
        self,
        config: Config,
        *,
        dsn: str | None = None,
        listen: tuple[str, int] | None = None,
        admin_listen: tuple[str, int] | None = None,
        clock: Clock = utc_now,
        shared_listener: bool = False,
        admin: bool = True,
    ) -> None:
        self.config = config
        self._shared_listener = shared_listener
        self._serve_admin = admin
        self.rules: Rules = config.rules  # swapped whole on reload
        self._dsn = dsn
        self._listen = listen
        self._admin_listen = admin_listen
        self.metrics = Metrics()
        self.admin_port = 0
        self.admin_app: web.Application | None = None
        self._clock = clock
        self._stack = AsyncExitStack()
        self.store: Store
        self.handler: IntakeHandler
        self.server: asyncio.Server
        self.worker: DeliveryWorker | None = None
        self.incident_watch: IncidentWatch | None = None
        self.guardrail_gate: GuardrailGate | None = None
        self.port = 0

    async def __aenter__(self) -> Relay:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    def _bounce_reader(self, config: Config) -> BounceReader | None:
        return_paths = config.dsn.return_paths
        if return_paths is None:
            return None
        return BounceReader(
            self.store,
            return_paths,
            lambda: self.rules,
            clock=self._clock,
            metrics=self.metrics,
            dsn=config.dsn,
        )

    async def _start(self) -> None:
        config = self.config
        self.store = await open_store(config, self._stack, dsn=self._dsn, queue_pool=True)
        vacuum = asyncio.create_task(
            vacuum_while_autovacuum_is_off(self.store), name="maintenance.vacuum"
        )
        self._stack.push_async_callback(_cancel, vacuum)
        # Partitions created ahead, old ones dropped, finished rows deleted: every relay runs
        # it, the store's advisory lock lets one at a time do the work.
        lifecycle = asyncio.create_task(
            keep_data_lifecycle(self.store, config, clock=self._clock, metrics=self.metrics),
            name="maintenance.retention",
        )
        self._stack.push_async_callback(_cancel, lifecycle)
        # Subscriptions follow the config on every start (none configured: no outbox rows).
        await sync_subscriptions(self.store, config.webhooks)
        if config.webhooks:
            sender = await self._stack.enter_async_context(
                WebhookSender(
                    self.store,
                    config.webhooks,
                    clock=self._clock,
                    keep=config.retention.webhook_outbox,
                )
            )
            webhooks = asyncio.create_task(sender.run(), name="webhooks.sender")
            self._stack.push_async_callback(sender.stop, webhooks, 5.0)
        if config.delivery.enabled:
            upstream = Upstream(config.delivery, config.smtp.hostname)
            self._stack.push_async_callback(upstream.close)
            self.worker = DeliveryWorker(
                self.store,
                upstream,
                config.delivery,
                lambda: self.rules,
                clock=self._clock,
                metrics=self.metrics,
                return_paths=config.dsn.return_paths,
            )
            # Registered before anything is leased to it; its heartbeat outlives the drain
            # in worker.stop (teardown is in reverse), and it retires once that is done.
            await self.worker.heartbeat.register()
            self._stack.push_async_callback(self.worker.heartbeat.retire)
            heartbeat = asyncio.create_task(
                self.worker.heartbeat.keep_registered(), name="delivery.heartbeat"
            )
            self._stack.push_async_callback(_cancel, heartbeat)
            worker_task = asyncio.create_task(self.worker.run(), name="delivery.worker")
            self._stack.push_async_callback(
                self.worker.stop, worker_task, config.delivery.shutdown_grace.total_seconds()
            )
            self.incident_watch = IncidentWatch(
                self.store, self.worker, lambda: self.rules, clock=self._clock, metrics=self.metrics
            )
            watch = asyncio.create_task(self.incident_watch.run(), name="incidents.watch")
            self._stack.push_async_callback(_cancel, watch)
            self.guardrail_gate = GuardrailGate(
                self.store, lambda: self.rules.guardrails, metrics=self.metrics
            )
            self.worker.guardrails = self.guardrail_gate
            guardrail_watch = GuardrailWatch(
                self.store,
                self.guardrail_gate,
                lambda: self.rules.guardrails,
                clock=self._clock,
                metrics=self.metrics,
            )
            guard = asyncio.create_task(guardrail_watch.run(), name="guardrails.watch")
            self._stack.push_async_callback(_cancel, guard)
            self._start_shaping(upstream)
        committer = GroupCommitter(
            self.store,
            max_batch=config.store.commit_batch,
            on_commit=self.worker.wake if self.worker else None,
            direct=self.worker,
            clock=self._clock,
        )
        self._stack.push_async_callback(committer.close)
        bounces = self._bounce_reader(config)
        if bounces is not None:
            expiry = asyncio.create_task(
                bounces.expire_unmatched_forever(), name="bounces.expire_unmatched"
            )
            self._stack.push_async_callback(_cancel, expiry)
        self.handler = IntakeHandler(
            store=self.store,
            committer=committer,
            smtp=config.smtp,
            campaign_header=config.campaign_header,
            metrics=self.metrics,
            bounces=bounces,
            rules=lambda: self.rules,
            clock=self._clock,
        )
        self._stack.push_async_callback(self.handler.close)
        self.server = await start_intake(
            self.handler, config.smtp, self._listen, shared=self._shared_listener
        )
        self._stack.push_async_callback(self._stop_intake)
        if self._serve_admin:
            runner, self.admin_port = await start_admin(
                self.store,
                self.metrics,
                lambda: self.server.is_serving() and not self.handler.shutting_down,
                self._admin_listen or config.admin.listen,
                config.admin.tokens,
                config.admin.password_hash,
                clock=self._clock,
                trusted_proxies=config.admin.trusted_proxies,
                rules=lambda: self.rules,
            )
            self._stack.push_async_callback(runner.cleanup)
            self.admin_app = runner.app  # its routes, for tests that walk every page
        self.port = self.server.sockets[0].getsockname()[1]
        log.info(
            "intake.listening", address=self.server.sockets[0].getsockname()[0], port=self.port
        )

    def _start_shaping(self, upstream: Upstream) -> None:
        """The worker's side of the limits shared with the other relays (docs/shaping.md)."""
        assert self.worker is not None
        shaper = Shaper(
            self.store,
            self.worker.owner,
            lambda: self.rules.shaping,
            clock=self._clock,
            open_connections=upstream.open_connections,
            metrics=self.metrics,
        )
        upstream.connection_cap = shaper.connection_cap
        self.worker.shaper = shaper
        self._stack.push_async_callback(shaper.leave)
        shaping = asyncio.create_task(shaper.run(), name="shaping.rounds")
        self._stack.push_async_callback(_cancel, shaping)

    async def _stop_intake(self) -> None:
        """Stop accepting mail, give sessions in DATA time to hear their 250, then close.

        While sessions finish, the listener stays open and new connections and new
        transactions hear 421 4.3.2, so clients retry elsewhere or later at once.
        """
        self.handler.shutting_down = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.handler.wait_transactions_finished(), SHUTDOWN_GRACE_SECONDS
            )
        if self.handler.open_transactions:
            log.warning("intake.shutdown_cut_sessions", sessions=self.handler.open_transactions)
        self.server.close()

    def reload(self) -> None:
        """SIGHUP: read config.toml again and swap the rules in one assignment.

        Routes, pools, retry and classification rules, ``[policy]`` (suppress_on,
        confirm_hard, dry_run) and ``[incidents]`` change at once for every new delivery and
        RCPT; sessions and transactions in flight go on. A file that fails
        validation is refused and the old rules stay. Other sections need a restart.
        """
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = load_config(self.config.path)
        except ConfigErrors as exc:
            log.error(
                "config.reload_refused",
                path=str(self.config.path),
                errors=[str(e) for e in exc.errors],
                action="kept the old rules; fix the file and send SIGHUP again",
            )
            systemd.notify("READY=1")
            return
        for section in (
            "smtp",
            "store",
            "delivery",
            "admin",
            "campaign_header",
            "log_level",
            "dsn",
            "webhooks",
            "retention",
        ):
            if getattr(new, section) != getattr(self.config, section):
                log.warning(
                    "config.restart_needed",
                    section=section,
                    action="only routes, pools, retry, classification, [policy] and "
                    "[incidents] reload; restart the relay to apply this section",
                )
        self.rules = new.rules
        log.info(
            "config.reloaded",
            routes=len(new.rules.routes),
            pools=len(new.rules.pools),
            retry_rules=len(new.rules.retry.rules),
            classify_rules=len(new.rules.classify_rules),
        )
        systemd.notify("READY=1")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(
    config: Config, role: ProcessRole | None = None, *, listen: tuple[str, int] | None = None
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the rules.

    ``role``: one of several processes started by ``relay.ops.supervisor`` (shared port, the
    admin listener in process 0 only, readiness told to the supervisor). ``listen``:
    ``serve --listen``, instead of ``[smtp] listen`` for this run."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        relay = Relay(
            config,
            listen=listen,
            shared_listener=role is not None,
            admin=role is None or role.index == 0,
        )
        async with relay:
            loop.add_signal_handler(signal.SIGHUP, relay.reload)
            systemd.notify("READY=1", f"STATUS=listening on port {relay.port}")
            signal_ready()
            log.info(
                "relay.ready" if role is None else "relay.process_ready",
                port=relay.port,
                event_loop=type(loop).__module__,
                process=None if role is None else role.index,
            )
            watchdog = asyncio.create_task(systemd.watchdog(), name="systemd.watchdog")
            await stop.wait()
            watchdog.cancel()
            systemd.notify("STOPPING=1")
            log.info("relay.stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("relay.stopped")

"""Prometheus metrics of one relay (a registry of its own, so tests can run many relays).

Counters move where things happen (intake, delivery); queue depth, the oldest queued
delivery and the database pool are read when /metrics is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "bounce_relay_messages_accepted", "Messages committed and answered 250", registry=r
        )
        self.rejected = Counter(
            "bounce_relay_rejected", "Commands refused at intake, by reason", ["reason"], registry=r
        )
        self.deliveries = Counter(
            "bounce_relay_deliveries",
            "Delivery attempts by outcome and category",
            ["outcome", "category"],
            registry=r,
        )
        self.bounces = Counter(
            "bounce_relay_bounces", "Bounce events by kind", ["kind"], registry=r
        )
        self.non_delivery = Counter(
            "bounce_relay_non_delivery", "Soft bounces given up: non_delivery events", registry=r
        )
        self.queue_depth = Gauge(
            "bounce_relay_queue_depth", "Deliveries by state (open states)", ["state"], registry=r
        )
        self.oldest_queued = Gauge(
            "bounce_relay_oldest_queued_seconds",
            "Age of the oldest queued delivery's message",
            registry=r,
        )
        self.bounce_messages = Counter(
            "bounce_relay_bounce_messages",
            "Recipient results read from bounce messages (DSN, ARF), by event recorded",
            ["event"],
            registry=r,
        )
        self.dry_run = Counter(
            "bounce_relay_dry_run_would_refuse",
            "[policy] dry_run: suppressed recipients let through, where (rcpt, delivery)",
            ["where"],
            registry=r,
        )
        self.incidents = Counter(
            "bounce_relay_incidents",
            "Provider incidents detected and closed",
            ["event"],
            registry=r,
        )
        self.recipient_domains_flagged = Counter(
            "bounce_relay_recipient_domains_flagged",
            "Recipients whose domain [recipients] flagged at RCPT, by reason and action",
            ["reason", "action"],
            registry=r,
        )
        self.guardrails = Counter(
            "bounce_relay_guardrails",
            "Guardrail judgements that changed a send: tripped (paused), review",
            ["event"],
            registry=r,
        )
        self.guardrails_paused = Gauge(
            "bounce_relay_guardrails_paused",
            "Sends (campaign x From domain x provider) paused by a guardrail now",
            registry=r,
        )
        self.guardrail_held = Counter(
            "bounce_relay_guardrail_held_deliveries",
            "Deliveries handed back untried by a guardrail: paused send, or beyond a canary",
            ["reason"],
            registry=r,
        )
        self.shaping_changes = Counter(
            "bounce_relay_shaping_changes",
            "Changes of a shared shaping limit (docs/shaping.md), by limit and cause",
            ["what", "cause"],
            registry=r,
        )
        self.shaping_waits = Counter(
            "bounce_relay_shaping_waits",
            "Transactions that waited for shaping: for a connection (in the worker), for a start "
            "slot or after 30 s without a connection (handed back untried)",
            ["reason"],
            registry=r,
        )
        self.shaping_rounds_failed = Counter(
            "bounce_relay_shaping_rounds_failed",
            "Shaping rounds the database did not take (shares kept as they were)",
            registry=r,
        )
        self.leased = Counter(
            "bounce_relay_deliveries_leased",
            "Deliveries leased: as they were committed (sent at once, from memory) or by a claim",
            ["how"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "bounce_relay_delivery_latency_seconds",
            "From acceptance to the upstream's 2xx",
            buckets=_SECONDS,
            registry=r,
        )
        self.session_duration = Histogram(
            "bounce_relay_smtp_session_seconds",
            "SMTP intake session duration",
            buckets=_SECONDS,
            registry=r,
        )
        # bounce_relay_log_lines_dropped_total: info and debug lines this process dropped
        # because stderr fell behind (relay.ops.logging); read when scraped.
        from relay.ops.logging import DroppedLogLines

        r.register(DroppedLogLines())
        self.db_pool = Gauge(
            "bounce_relay_db_pool_connections", "Database pool connections", ["state"], registry=r
        )
        # The data lifecycle ([retention], relay.ops.maintenance): counted by the relay
        # process that did the work (one at a time); sum them over the relays.
        self.retention_partitions_created = Counter(
            "bounce_relay_retention_partitions_created",
            "Partitions of events created ahead by the data lifecycle",
            registry=r,
        )
        self.retention_partitions_dropped = Counter(
            "bounce_relay_retention_partitions_dropped",
            "Partitions of events dropped once older than [retention] events",
            registry=r,
        )
        self.retention_rows = Counter(
            "bounce_relay_retention_rows_removed",
            "Rows removed by the data lifecycle, by table (events: dropped partitions, by "
            "PostgreSQL's row estimate)",
            ["table"],
            registry=r,
        )
        self.retention_bytes = Counter(
            "bounce_relay_retention_bytes_dropped",
            "Bytes on disk freed by dropping partitions of events",
            registry=r,
        )
        self.retention_failures = Counter(
            "bounce_relay_retention_failures",
            "Data lifecycle steps that failed (retried at the next run), by step",
            ["step"],
            registry=r,
        )
        self.retention_last_run = Gauge(
            "bounce_relay_retention_last_run_timestamp_seconds",
            "When this relay process last finished a data lifecycle run (its clock)",
            registry=r,
        )
        self.retention_run_seconds = Gauge(
            "bounce_relay_retention_last_run_seconds",
            "How long this relay process's last data lifecycle run took",
            registry=r,
        )
        self.retention_default_rows = Gauge(
            "bounce_relay_retention_default_partition_rows",
            "Events in the default partition at the last run (0 while partitions are "
            "created ahead)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Run the fault suite and write RELIABILITY.md from what it measured.

    python -m tests.chaos.report                       # the suite as CI runs it
    python -m tests.chaos.report --iterations 50 --soak 20000   # longer runs

Each test in ``tests/chaos`` appends one JSON line per case (case, expected, observed and
its numbers) to the file named by ``BOUNCE_RELAY_RELIABILITY_OUT``; this module runs them
with that variable set, reads the lines back, and renders the tables, the numbers, the
machine and versions, and the command that produced them. The second table lists the
reliability and security cases the rest of the suite covers (``COVERED``, checked by
``tests/chaos/test_report.py`` so that a renamed test cannot go stale here).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT_ENV = "BOUNCE_RELAY_RELIABILITY_OUT"


@dataclass(frozen=True)
class Covered:
    case: str
    tests: tuple[str, ...]  # "path::name", relative to the repository


COVERED = (
    Covered(
        "Behind PgBouncer in transaction pooling (Debian's 1.18): accept, deliver, bounce, "
        "report, migrations; no prepared statement or lock left on pooled server connections",
        (
            "tests/e2e/test_pgbouncer.py::test_relay_through_pgbouncer_in_transaction_mode",
            "tests/e2e/test_pgbouncer.py::test_the_stores_advisory_lock_holds_through_pgbouncer",
        ),
    ),
    Covered(
        "Relays on two hosts sharing one database: exactly-once accounting",
        (
            "tests/e2e/test_multi_host.py::"
            "test_two_hosts_share_one_database_with_exactly_once_accounting",
        ),
    ),
    Covered(
        "Refuses to start on a server with `fsync` or `synchronous_commit` off",
        (
            "tests/relay/intake/test_server.py::test_refuses_to_start_when_commits_would_not_be_durable",
        ),
    ),
    Covered(
        "Database gone at RCPT or DATA: generic `451 4.3.0` (no driver text), nothing "
        "half-written, recovery without a restart",
        (
            "tests/relay/intake/test_server.py::test_database_unreachable_answers_451_and_writes_nothing",
        ),
    ),
    Covered(
        "SIGKILL of one of two relays mid-delivery: nothing lost, few duplicates",
        ("tests/e2e/test_crash.py::test_sigkill_mid_delivery_loses_nothing",),
    ),
    Covered(
        "SIGTERM under load: sessions in DATA get their reply, nothing lost; late clients 421",
        (
            "tests/e2e/test_operations.py::test_sigterm_under_load_loses_nothing",
            "tests/relay/intake/test_server.py::"
            "test_shutdown_lets_open_transactions_finish_and_tells_new_clients_421",
        ),
    ),
    Covered(
        "SIGKILL of the supervisor leaves no orphan process",
        (
            "tests/e2e/test_processes.py::test_sigkill_of_the_supervisor_takes_every_process_with_it",
        ),
    ),
    Covered(
        "Lease fencing in one process (a late worker's outcome is refused)",
        (
            "tests/relay/delivery/test_worker.py::test_lease_fencing_keeps_a_late_worker_from_overwriting",
        ),
    ),
    Covered(
        "SIGHUP with a bad file keeps the old rules",
        ("tests/e2e/test_operations.py::test_sighup_reloads_routes_and_refuses_a_bad_file",),
    ),
    Covered(
        "Not an open relay: clients outside `allowed_clients`, AUTH only after STARTTLS, "
        "`auth_required`, `require_tls`, wrong passwords",
        (
            "tests/relay/intake/test_server.py::test_client_not_allowed_gets_5xx_and_nothing_is_stored",
            "tests/relay/intake/test_tls_auth.py::test_auth_is_offered_only_after_starttls",
            "tests/relay/intake/test_tls_auth.py::"
            "test_wrong_password_is_refused_and_relaying_stays_denied",
            "tests/relay/intake/test_tls_auth.py::"
            "test_auth_required_refuses_allowed_client_without_login",
            "tests/relay/intake/test_tls_auth.py::test_require_tls_refuses_mail_in_clear",
        ),
    ),
    Covered(
        "SMTP smuggling and STARTTLS injection fixes pinned (aiosmtpd >= 1.4.6, "
        "aiosmtplib >= 5.1.2) and installed",
        ("tests/test_dependency_pins.py::test_pin_and_installed_version_carry_the_fix",),
    ),
    Covered(
        "Oversize message `552 5.3.4`; input that crashes the address grammar is a syntax "
        "error, not a 451",
        (
            "tests/relay/intake/test_server.py::test_oversize_message_gets_552",
            "tests/relay/intake/test_server.py::"
            "test_a_path_that_crashes_the_address_grammar_is_a_syntax_error",
        ),
    ),
    Covered(
        "Hypothesis fuzzing of the parsers (bounce messages, headers, paths, hints, VERP)",
        (
            "tests/policies/test_dsn.py::test_fuzz_arbitrary_bytes",
            "tests/policies/test_dsn.py::test_fuzz_arbitrary_body_after_headers",
            "tests/policies/test_dsn.py::test_fuzz_mutated_dsn",
            "tests/policies/test_dsn.py::test_fuzz_mutated_delivery_status_fields",
            "tests/policies/test_headers.py::test_hand_parser_agrees_with_the_email_package",
            "tests/relay/intake/test_server.py::test_the_fast_path_parser_reads_paths_exactly_as_aiosmtpd",
            "tests/policies/test_hints.py::test_hint_for_never_raises",
            "tests/policies/test_verp.py::test_every_delivery_id_round_trips",
        ),
    ),
    Covered(
        "Bounce messages built to exhaust the parser (deep nesting, too many parts)",
        (
            "tests/policies/test_dsn.py::test_deep_nesting_is_malformed",
            "tests/policies/test_dsn.py::test_too_many_parts_is_malformed",
        ),
    ),
    Covered(
        "Forged bounces: no valid VERP token suppresses nobody; a bounce of a bounce is "
        "dropped; anyone may send bounces but not relay",
        (
            "tests/relay/intake/test_bounces.py::test_a_bounce_without_a_valid_token_suppresses_nobody",
            "tests/policies/test_verp.py::test_another_secret_or_domain_does_not_verify",
            "tests/relay/intake/test_bounces.py::test_a_bounce_of_a_bounce_is_dropped",
            "tests/relay/intake/test_bounces.py::test_any_client_may_send_bounces_but_not_relay",
        ),
    ),
    Covered(
        "Formula injection in CSV and XLSX exports; report text shown as text (XSS)",
        (
            "tests/relay/reports/test_export.py::test_csv_parses_back_and_neutralises_formulas",
            "tests/relay/reports/test_export.py::"
            "test_xlsx_reads_back_with_types_header_total_and_chart_sheet",
            "tests/relay/web/test_report_page.py::test_report_page_download_and_xss_as_text",
        ),
    ),
    Covered(
        "Admin page: CSRF on changes, login rate limit; API bearer tokens",
        (
            "tests/relay/web/test_suppression_page.py::test_remove_needs_csrf_and_works_with_it",
            "tests/relay/web/test_pages.py::test_wrong_password_refused_then_rate_limited",
            "tests/relay/web/test_api.py::test_without_or_with_a_wrong_token_401",
        ),
    ),
    Covered(
        "Never suppress a good address on our own failures or non-recipient 5xx",
        (
            "tests/policies/test_classify.py::test_dataset_never_suppresses_a_good_address",
            "tests/policies/test_classify.py::test_synthetic_failures_are_soft_and_never_suppress",
        ),
    ),
    Covered(
        "Webhooks: one sender per row per lease, signatures verify",
        (
            "tests/relay/test_webhooks.py::test_two_senders_never_post_the_same_row_in_one_lease",
            "tests/relay/test_webhooks.py::test_verify_signature",
        ),
    ),
    Covered(
        "Slow and abusive clients: connection cap `421 4.7.0`, idle and whole-DATA timeouts, "
        "minimum data rate, NOOP/RSET/invalid-command limits; a normal client is served "
        "while twenty abusive ones are connected",
        (
            "tests/relay/intake/test_hostile_clients.py::test_past_max_connections_a_new_client_hears_421_and_is_closed",
            "tests/relay/intake/test_hostile_clients.py::test_idle_client_hears_421_4_4_2_and_is_closed",
            "tests/relay/intake/test_hostile_clients.py::test_data_longer_than_data_timeout_is_cut_and_nothing_stored",
            "tests/relay/intake/test_hostile_clients.py::test_data_slower_than_min_data_rate_is_cut_fast_clients_are_not",
            "tests/relay/intake/test_hostile_clients.py::test_a_flood_of_noop_or_rset_is_cut_at_its_limit",
            "tests/relay/intake/test_hostile_clients.py::test_invalid_commands_are_cut_at_max_invalid_commands",
            "tests/relay/intake/test_hostile_clients.py::test_a_normal_client_is_served_while_twenty_abusive_ones_are_connected",
        ),
    ),
    Covered(
        "Mail loop: the relay prepends its own `Received:` field, which counts toward "
        "`max_hops`; a route or MX pointing back at the relay ends after `max_hops` passes "
        "with `554 5.4.6`, one bounce, nobody suppressed (before: thousands of copies)",
        (
            "tests/relay/intake/test_trace_and_loops.py::"
            "test_a_route_back_to_the_relay_itself_ends_after_max_hops_passes",
            "tests/relay/intake/test_trace_and_loops.py::test_our_field_counts_toward_max_hops",
            "tests/relay/intake/test_hostile_clients.py::test_max_hops_received_fields_are_refused_as_a_loop",
        ),
    ),
    Covered(
        "A hostile EHLO name (control characters, CR, NUL, injected clauses, over-long, "
        "non-ASCII) never reaches our `Received:` field; the client's address stands in",
        (
            "tests/relay/intake/test_trace_and_loops.py::test_a_hostile_ehlo_name_never_reaches_the_header",
            "tests/relay/intake/test_trace_and_loops.py::test_a_well_formed_ehlo_name_is_kept",
        ),
    ),
    Covered(
        "SMTP AUTH: scrypt in worker threads (clients greeted while ten checks run; past the "
        "checker's capacity `454 4.7.0`); `max_auth_failures` per session then `421`, "
        "`auth_failures_per_client` per address (IPv6 /64) in the window then `421`",
        (
            "tests/relay/intake/test_auth_limits.py::test_clients_are_greeted_while_ten_auth_checks_run",
            "tests/relay/intake/test_auth_limits.py::"
            "test_past_the_checkers_capacity_auth_hears_454_and_counts_nothing",
            "tests/relay/intake/test_auth_limits.py::test_a_session_is_cut_after_max_auth_failures",
            "tests/relay/intake/test_auth_limits.py::"
            "test_a_client_address_is_refused_auth_until_its_window_passes",
            "tests/relay/intake/test_auth_limits.py::test_a_client_is_an_ipv4_address_or_an_ipv6_64",
        ),
    ),
    Covered(
        "IP-literal recipients: refused at RCPT (`550 5.1.2`) unless their route has "
        "`address_literals`; never looked up in DNS as names, never suppressed; a literal "
        "route delivers to the IP",
        (
            "tests/relay/intake/test_hostile_clients.py::"
            "test_an_address_literal_recipient_is_refused_where_its_route_does_not_allow_it",
            "tests/relay/intake/test_hostile_clients.py::"
            "test_a_route_with_address_literals_takes_the_literals_it_matches",
            "tests/relay/intake/test_hostile_clients.py::test_a_malformed_address_literal_is_a_syntax_error",
            "tests/relay/delivery/test_worker.py::"
            "test_an_address_literal_on_an_mx_route_goes_to_that_ip_never_to_dns",
            "tests/relay/delivery/test_worker.py::test_a_5xx_from_a_literal_destination_never_suppresses",
            "tests/relay/delivery/test_worker.py::"
            "test_an_address_literal_through_an_mx_route_without_address_literals",
            "tests/relay/delivery/test_routing.py::test_a_literal_that_is_no_host_address_fails_without_dns",
        ),
    ),
    Covered(
        "Hostile bounce messages (unclosed `<script>`, guessed boundaries, folded encoded "
        "Subject, thousands of recipient groups, megabytes of returned headers): parsed in a "
        "worker process in linear time, other clients greeted meanwhile; a parse over its "
        "budget is kept as unmatched, never a stall (before: 20-25 s stalls at 200 KB)",
        (
            "tests/relay/intake/test_hostile_bounces.py::"
            "test_other_clients_are_greeted_while_a_hostile_bounce_is_read",
            "tests/relay/intake/test_hostile_bounces.py::"
            "test_a_parse_over_budget_is_kept_as_unmatched_and_the_next_bounce_is_read",
            "tests/policies/test_dsn_hostile.py::test_a_hostile_bounce_of_2_mb_is_parsed_within_budget",
            "tests/policies/test_dsn_hostile.py::test_line_patterns_take_linear_time_on_long_runs",
            "tests/policies/test_fuzz.py::test_hostile_repetitions_in_bounces_parse_within_the_deadline",
            "tests/policies/test_replies.py::"
            "test_a_long_blank_run_in_a_continued_reply_is_read_in_linear_time",
        ),
    ),
    Covered(
        "Hostile headers on relay mail (a From folded over megabytes, a 35 MB header, nested "
        "comments): at most 100 KB read as the header, bounded time, a broken From costs "
        "the field only",
        (
            "tests/relay/intake/test_hostile_bounces.py::test_a_hostile_from_on_intake_does_not_hold_other_clients",
            "tests/policies/test_headers.py::test_a_from_folded_over_megabytes_is_read_in_bounded_time",
            "tests/policies/test_headers.py::test_a_35_mb_header_is_read_up_to_max_header_bytes",
            "tests/policies/test_headers.py::test_nested_comments_in_from_cost_the_field_not_the_message",
        ),
    ),
    Covered(
        "Bounce-domain abuse bounded: unusable bounces limited per client address (`450 4.7.1`), "
        "one record per message whatever its recipient count, deleted after the retention; "
        "the same DSN repeated or sent concurrently counts once",
        (
            "tests/relay/intake/test_hostile_bounces.py::test_unusable_bounces_are_limited_per_client_address",
            "tests/relay/intake/test_hostile_bounces.py::"
            "test_one_message_to_a_thousand_bounce_addresses_is_one_record",
            "tests/relay/intake/test_hostile_bounces.py::test_unusable_bounces_are_deleted_after_the_retention",
            "tests/relay/intake/test_hostile_bounces.py::test_unusable_bounces_expire_without_bounce_traffic",
            "tests/relay/intake/test_bounces.py::test_the_same_delayed_dsn_five_times_is_one_soft_bounce",
            "tests/relay/intake/test_bounces.py::test_two_copies_of_a_dsn_at_once_count_once",
        ),
    ),
    Covered(
        "Leases by the database's clock: a relay whose clock runs 20 minutes ahead never takes "
        "over a live delivery (before: it sent it a second time); webhook rows the same",
        (
            "tests/relay/delivery/test_worker.py::"
            "test_a_relay_whose_clock_runs_ahead_never_takes_over_a_live_lease",
            "tests/relay/test_webhooks.py::test_a_lease_that_runs_out_is_posted_by_another_sender",
        ),
    ),
    Covered(
        "Upstream out of step (malformed line, two replies to one command, `354` to MAIL, a "
        "surplus line after EHLO or after the data, a line sent while pooled): soft "
        "`451 4.5.0`, the connection closed and never pooled; nothing recorded delivered "
        "that the upstream did not receive",
        (
            "tests/relay/delivery/test_upstream_protocol.py::test_a_malformed_reply_line_is_a_protocol_error",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_two_replies_to_one_rcpt_never_mark_the_message_delivered",
            "tests/relay/delivery/test_upstream_protocol.py::test_a_354_to_mail_is_a_protocol_error",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_a_surplus_line_after_ehlo_is_caught_before_mail",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_a_surplus_reply_after_the_data_is_not_read_by_the_next_transaction",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_a_line_sent_while_the_connection_was_idle_keeps_it_out_of_the_pool",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_replies_are_counted_over_starttls_on_either_event_loop",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_no_delivery_is_recorded_that_the_upstream_never_received",
        ),
    ),
    Covered(
        "Anything but `354` to DATA (`250`, `220`, `554`, `250` then `354`) is a soft "
        "protocol error, never delivered; a missing reply times out on `command_timeout`",
        (
            "tests/relay/delivery/test_upstream_protocol.py::test_anything_but_354_to_data_is_a_protocol_error",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_a_2xx_and_a_354_to_data_is_a_protocol_error",
            "tests/relay/delivery/test_upstream_protocol.py::test_a_250_to_data_is_never_recorded_delivered",
            "tests/relay/delivery/test_upstream_protocol.py::"
            "test_a_missing_reply_to_data_times_out_on_the_command_timeout",
        ),
    ),
    Covered(
        "Admin and API secrets: a flood of bogus bearer tokens never delays SMTP greetings "
        "(scrypt in worker threads, bounded, HMAC-keyed caches; 503 past capacity); token "
        "guessing 429 per client; 60 parallel wrong passwords, at most 5 checked",
        (
            "tests/relay/web/test_hardening.py::test_bogus_token_flood_keeps_the_smtp_greeting_fast",
            "tests/relay/web/test_hardening.py::test_repeated_bogus_token_is_refused_without_scrypt",
            "tests/relay/web/test_hardening.py::test_api_failures_are_limited_per_client",
            "tests/relay/web/test_hardening.py::test_parallel_wrong_passwords_check_at_most_five",
            "tests/relay/web/test_hardening.py::test_login_limit_ends_with_its_window",
            "tests/relay/web/test_hardening.py::"
            "test_login_limit_keys_on_the_client_behind_a_trusted_proxy",
        ),
    ),
    Covered(
        "Admin page: cross-site POSTs and login CSRF refused (403), no framing (CSP "
        "`frame-ancestors 'none'`, X-Frame-Options, checked in Chromium), no-store; hostile "
        "numbers in page/API parameters are 400, never 500",
        (
            "tests/relay/web/test_hardening.py::test_post_from_another_origin_is_refused",
            "tests/relay/web/test_hardening.py::test_login_needs_the_forms_csrf_token",
            "tests/relay/web/test_hardening.py::"
            "test_every_admin_response_forbids_framing_and_caching",
            "tests/e2e/test_admin_browser.py::test_another_site_cannot_frame_the_admin_page",
            "tests/relay/web/test_hardening.py::test_bad_numbers_in_pages_are_400",
            "tests/relay/web/test_hardening.py::test_bad_numbers_in_api_reports_are_400",
        ),
    ),
    Covered(
        "IDNA 2008 (UTS 46 non-transitional): `straße.de` is `xn--strae-oqa.de` and never "
        "`strasse.de` for suppression keys, routing, MX lookup and downgrade; domains with no "
        "IDNA 2008 form refused at RCPT",
        (
            "tests/relay/test_idna.py::"
            "test_suppressing_the_u_label_refuses_the_a_label_and_not_strasse",
            "tests/relay/test_idna.py::test_suppressing_the_a_label_refuses_every_u_label_spelling",
            "tests/relay/test_idna.py::test_mail_to_a_sharp_s_domain_goes_to_its_own_mx_not_to_strasse",
            "tests/relay/test_idna.py::test_a_domain_without_an_idna_2008_form_is_refused_at_rcpt",
            "tests/relay/test_idna.py::test_a_sharp_s_recipient_reaches_a_7bit_server_as_its_a_label",
            "tests/relay/test_idna.py::test_config_domains_take_the_form_of_every_key",
            "tests/policies/test_addresses.py::test_every_spelling_of_a_domain_has_one_key_both_ways",
            "tests/policies/test_addresses.py::test_a_domain_of_absurd_length_is_refused_in_bounded_time",
        ),
    ),
    Covered(
        "Remote text (ESC, BEL, OSC, C1, DEL, bidi and zero-width characters, CR/LF/tab in a "
        "field) never reaches the operator's terminal raw from any command; a stored reason "
        "echoed in the RCPT `550` is one printable line",
        (
            "tests/e2e/test_terminal_escaping.py::test_queue_list_and_show",
            "tests/e2e/test_terminal_escaping.py::test_profile_show",
            "tests/e2e/test_terminal_escaping.py::test_suppression_list_and_audit",
            "tests/e2e/test_terminal_escaping.py::test_suppression_why_text_and_json",
            "tests/e2e/test_terminal_escaping.py::test_incidents_list_and_show",
            "tests/e2e/test_terminal_escaping.py::test_report_table",
            "tests/e2e/test_terminal_escaping.py::test_classify_replay_table_and_jsonl",
            "tests/e2e/test_terminal_escaping.py::test_dsn_parse",
            "tests/e2e/test_terminal_escaping.py::test_csv_on_a_terminal_is_escaped",
            "tests/e2e/test_suppression_admin.py::"
            "test_suppression_refusal_is_one_line_whatever_the_reason",
        ),
    ),
    Covered(
        "SMTP smuggling: every end-of-data variant (bare LF/CR, NUL) refused, never a second "
        "message; CRLF and dot-stuffing intact upstream, one MAIL per message",
        (
            "tests/relay/intake/test_hostile_clients.py::test_no_end_of_data_variant_smuggles_a_second_message",
            "tests/relay/intake/test_hostile_clients.py::test_dot_lines_and_crlf_reach_the_upstream_intact",
        ),
    ),
    Covered(
        "STARTTLS command injection in both directions (relay as server, relay as client "
        "against an upstream that forges a reply)",
        (
            "tests/relay/intake/test_starttls_injection.py::"
            "test_commands_pipelined_after_starttls_are_discarded_by_the_relay",
            "tests/relay/intake/test_starttls_injection.py::"
            "test_a_reply_injected_after_starttls_is_not_taken_by_the_relay",
        ),
    ),
    Covered(
        "Envelope addresses: control characters, NUL, invalid UTF-8, over-long parts, quoted "
        "CRLF, UTF-8 without SMTPUTF8 refused and never stored; what goes upstream is exactly "
        "what was stored (aiosmtplib rewrites nothing the intake accepts)",
        (
            "tests/relay/intake/test_hostile_clients.py::test_hostile_recipient_is_refused_and_never_stored",
            "tests/relay/intake/test_hostile_clients.py::test_hostile_sender_is_refused",
            "tests/relay/intake/test_hostile_clients.py::test_recipients_reach_the_upstream_exactly_as_stored",
            "tests/relay/intake/test_hostile_clients.py::test_no_address_the_intake_accepts_is_rewritten_by_aiosmtplib",
        ),
    ),
    Covered(
        "Open relay: source routes, `%` hack, `!` paths, quoted `@`, IP literals, trailing "
        "dots from outside `allowed_clients` relay nothing; PROXY headers only from listed "
        "proxies, and the proxied client decides",
        (
            "tests/relay/intake/test_hostile_clients.py::test_an_outsider_relays_nothing_whatever_the_routing_trick",
            "tests/relay/intake/test_hostile_clients.py::test_a_proxy_header_from_anyone_else_is_refused_and_never_honoured",
            "tests/relay/intake/test_hostile_clients.py::test_relaying_is_decided_by_the_proxied_client_not_the_proxy",
            "tests/relay/intake/test_hostile_clients.py::test_starttls_through_a_proxy_keeps_the_proxied_client",
        ),
    ),
    Covered(
        "Memory: fifty concurrent near-limit messages stay within the documented bound",
        (
            "tests/relay/intake/test_hostile_clients.py::test_fifty_concurrent_near_limit_messages_keep_rss_bounded",
        ),
    ),
    Covered(
        "Next hop without SMTPUTF8 / 8BITMIME: A-label domain, permanent 5.6.7 / 5.6.3, "
        "nobody suppressed, no loop",
        (
            "tests/relay/delivery/test_downgrade.py::"
            "test_a_utf8_domain_goes_as_its_a_label_and_a_utf8_local_part_fails",
            "tests/relay/delivery/test_downgrade.py::"
            "test_an_8bit_body_to_a_7bit_server_fails_once_and_suppresses_nobody",
        ),
    ),
    Covered(
        "Suppression races: a bounce stops the queued mail to its address, many writers make "
        "one entry, a removal racing a bounce ends in a defined state with both recorded; "
        "search wildcards are literal",
        (
            "tests/relay/store/test_suppression_races.py::"
            "test_a_hard_bounce_stops_the_queued_mail_to_the_address",
            "tests/relay/store/test_suppression_races.py::test_many_writers_make_one_entry",
            "tests/relay/store/test_suppression_races.py::"
            "test_a_removal_racing_a_new_bounce_ends_defined_and_both_are_recorded",
            "tests/relay/store/test_suppression_races.py::test_search_wildcards_are_literal",
            "tests/policies/test_addresses.py::test_normalise_address",
        ),
    ),
    Covered(
        "Fuzzing of reply parsing, templates, classification, addresses and import files",
        (
            "tests/policies/test_fuzz.py::"
            "test_reply_parsing_templates_hints_and_classification_never_raise",
            "tests/policies/test_fuzz.py::test_addresses_either_validate_or_raise_address_error",
            "tests/policies/test_fuzz.py::test_suppression_files_never_raise",
        ),
    ),
    Covered(
        "Exports: NUL, XML-illegal control characters, MIME-encoded and template-looking "
        "payloads leave CSV and XLSX whole, with no formula or hyperlink cell; a reply with a "
        "NUL is still recorded; login renews the session",
        (
            "tests/relay/reports/test_export.py::"
            "test_hostile_texts_export_without_formulas_links_or_a_broken_file",
            "tests/relay/delivery/test_bounce_intelligence.py::"
            "test_a_reply_with_nul_and_control_characters_is_recorded",
            "tests/relay/web/test_pages.py::test_login_renews_the_session",
        ),
    ),
    Covered(
        "A delivery whose sends keep ending with nothing recorded is given up; one whose "
        "relays die before sending it never is",
        (
            "tests/relay/store/test_lease_takeover.py::"
            "test_sends_that_keep_ending_unrecorded_give_the_delivery_up",
            "tests/relay/store/test_lease_takeover.py::"
            "test_a_delivery_whose_relays_die_before_sending_is_never_given_up",
        ),
    ),
    Covered(
        "A provider incident suppresses nobody and is released in one step",
        (
            "tests/relay/delivery/test_bounce_intelligence.py::"
            "test_an_incident_suppresses_nobody_and_is_released_in_one_step",
        ),
    ),
    Covered(
        "Secrets from the environment, not the config file",
        ("tests/e2e/test_cli.py::test_secrets_from_environment",),
    ),
    Covered(
        "A resolver that answers NXDOMAIN for every name (misconfigured, hijacked, no outside "
        "DNS) suppresses nobody: the parent zone or the root must answer; a vouched NXDOMAIN "
        "suppresses only when still there `nxdomain_confirm_after` later",
        (
            "tests/relay/delivery/test_worker.py::test_dns_verdicts",
            "tests/relay/delivery/test_worker.py::"
            "test_nxdomain_still_there_an_hour_later_bounces_and_suppresses",
        ),
    ),
    Covered(
        "A domain that publishes hundreds of MX hosts or addresses (none answering): an "
        "attempt tries at most 5 addresses, found among the 10 best MX hosts, so a delivery "
        "slot is held for at most 5 connect timeouts; the rest are never looked up. DNS "
        "answers are believed for their TTLs, at most a day (a negative one an hour): a TTL "
        "of decades cannot pin a destination",
        (
            "tests/relay/delivery/test_destinations.py::"
            "test_an_attempt_tries_a_bounded_number_of_addresses",
            "tests/relay/delivery/test_destinations.py::test_a_ttl_of_decades_is_believed_for_a_day",
            "tests/relay/delivery/test_destinations.py::test_a_failed_lookup_is_never_kept",
        ),
    ),
    Covered(
        "A resolver that says NXDOMAIN for many distinct domains at once while the parent "
        "zones answer (split horizon, a bad forwarder) opens a resolver incident: second "
        "looks defer and suppress nobody",
        (
            "tests/relay/delivery/test_worker.py::"
            "test_a_resolver_saying_no_such_domain_for_many_domains_is_an_incident",
            "tests/policies/test_probation_and_incidents.py::"
            "test_a_resolver_incident_holds_every_no_such_domain_of_ours",
        ),
    ),
    Covered(
        'An upstream that accepts a recipient at RCPT and says "User unknown" after DATA (a '
        "content filter, a carrier refusing the sender), and a bounce message's "
        'second-hand "unknown", suppress nobody',
        (
            "tests/relay/delivery/test_worker.py::"
            "test_user_unknown_after_data_bounces_but_suppresses_nobody",
            "tests/policies/test_verdict.py::"
            "test_user_unknown_after_data_is_hard_but_no_evidence_against_the_mailbox",
            "tests/policies/test_verdict.py::"
            "test_a_reported_unknown_needs_rcpt_or_an_address_status",
        ),
    ),
    Covered(
        "A hostile reply text of a megabyte classifies in bounded time (only its head is read)",
        ("tests/policies/test_classify.py::test_hostile_reply_classifies_quickly",),
    ),
    Covered(
        "What the running relay records for every real reply and bounce message is what "
        "`classify` and `dsn parse` print (one verdict, `policies.verdict`)",
        (
            "tests/e2e/test_verdict_agreement.py::"
            "test_every_real_reply_is_recorded_as_classify_decides_it",
            "tests/e2e/test_verdict_agreement.py::"
            "test_every_real_bounce_message_is_recorded_as_dsn_parse_reads_it",
        ),
    ),
    Covered(
        "A failed export (`report -o`, `suppression export -o`) leaves the existing file as it was",
        ("tests/e2e/test_cli_habits.py::test_a_failed_export_leaves_the_existing_file_as_it_was",),
    ),
)

# What the fault runs found, and what was done about it (kept by hand, rendered as is).
FINDINGS = (
    "**Fixed: a PostgreSQL restart duplicated deliveries.** An outcome that could not be "
    "written (database restarting, connections terminated) was dropped; the delivery stayed "
    "`inflight` until its lease ran out (15 min by default) and went to the upstream again "
    "although it had said 250: 3 to 12 duplicates per run here. The worker now writes the "
    "outcome again while the database is away, for up to half the lease (60 s at most); "
    "the runs above show 0 sent again.",
    "**Fixed: a reply in Latin-1 made the relay send a message forever.** aiosmtplib keeps "
    "bytes that are not UTF-8 as lone surrogates; PostgreSQL refused the outcome, the lease "
    "ran out, the message was sent again, with no attempt ever counted (120 sends of 8 "
    "messages in 30 s with a 2 s lease). Replies are now read as Latin-1 where they are not "
    "UTF-8, NUL is replaced, and the store cleans outcome texts like every other text.",
    "**Fixed: a transaction cut by an unexpected exception leaked its upstream "
    "connection.** It is now closed.",
    "**Not fixed, by design of SMTP:** a crash (or a lost commit reply) between the commit "
    "and the 250 leaves a stored message the client will send again: a duplicate. With "
    "concurrent sessions a crash anywhere on the receive path can land in another batch's "
    "window; the runs check that every such copy is one whose 250 was never written.",
    "**Fixed: non-ASCII envelopes.** Intake accepted a non-ASCII envelope address sent "
    "without SMTPUTF8 and delivery then failed every attempt; it is refused at MAIL/RCPT "
    "now (`553 5.6.7`, RFC 6531), and a malformed UTF-8 address gets `501`/`553`, not a "
    "generic 451 (`tests/relay/intake/test_hostile_clients.py`). A next hop without SMTPUTF8 gets "
    "a UTF-8 domain as its A-label and a UTF-8 local part fails permanently "
    "(`tests/relay/delivery/test_downgrade.py`).",
    "**Fixed, bounded: sends that never record an outcome.** An exception raised after "
    "the send (outside `_attempt`, e.g. a bug in the outcome policy) or an outcome the "
    "database refuses for good let the lease run out and the delivery be claimed again, "
    "each time without counting an attempt: unbounded. Deliveries now count the sends that "
    "follow a claim which ended with nothing recorded (`unrecorded_sends`, noted under the "
    "lease token just before the send, reset by every outcome, release or deferral); the "
    "fifth such send gives the delivery up (expired, non_delivery, rule `unrecorded_sends`; "
    "`tests/relay/store/test_lease_takeover.py`). Claims alone never give a delivery up, so "
    "a crash loop caused by another message cannot give up deliveries never sent.",
    "**Fixed: a crash cost a lease.** A SIGKILLed relay's deliveries (most leased at "
    "commit) stayed `inflight` with no attempt until the 15-minute lease ran out. Each "
    "delivering relay now beats a heartbeat in `relay_instances` every 2 s (the database's "
    "clock); 10 s of silence and a live peer takes its leases over with new tokens "
    "(`tests/chaos/test_dead_lease.py`: within ~12 s of a restart, directly and behind "
    "PgBouncer; a live relay with 15-second sends keeps its leases).",
    "**Fixed: retries are spread by default.** The default schedule had no jitter (only "
    '`backoff = "random"` spread retries), so a queue that failed together came back '
    "together. `[retry] spread` (0.1 by default) now stretches every schedule, fixed and "
    "geometric delay by a random share of up to 10 %.",
)


def _run_suite(out: Path, junit: Path, iterations: int | None, soak: int | None) -> int:
    env = {**os.environ, OUT_ENV: str(out)}
    if iterations is not None:
        env["BOUNCE_RELAY_CHAOS_ITERATIONS"] = str(iterations)
    if soak is not None:
        env["BOUNCE_RELAY_CHAOS_SOAK"] = str(soak)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/chaos",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    return subprocess.call(command, cwd=ROOT, env=env)


def _outcomes(junit: Path) -> dict[str, str]:
    """pytest's verdict per test id (``path::name[param]``)."""
    if not junit.exists():
        return {}
    verdicts: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        verdict = "pass"
        if case.find("failure") is not None or case.find("error") is not None:
            verdict = "FAIL"
        elif case.find("skipped") is not None:
            verdict = "skipped"
        verdicts[f"{path}::{case.get('name')}"] = verdict
    return verdicts


def _versions() -> list[tuple[str, str]]:
    rows = [("Python", platform.python_version())]
    for package in ("aiosmtpd", "aiosmtplib", "asyncpg", "structlog", "uvloop", "pgserver"):
        try:
            rows.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    rows.append(("PostgreSQL (test server)", _server_version()))
    rows.append(("PostgreSQL (private server, restart case)", _pgserver_version()))
    return rows


def _server_version() -> str:
    dsn = os.environ.get("BOUNCE_RELAY_TEST_DSN")
    if not dsn:
        return "embedded (pgserver), see below"
    import asyncio

    import asyncpg

    async def ask() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(ask()) + " (BOUNCE_RELAY_TEST_DSN)"
    except Exception as exc:  # the report still says what it could not find
        return f"unknown ({type(exc).__name__})"


def _pgserver_version() -> str:
    try:
        import warnings

        with warnings.catch_warnings():  # platformdirs on a machine without XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().rpartition(" ")[2]
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _machine() -> str:
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} CPUs{memory}"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


NUMBER_COLUMNS = ("accepted", "delivered", "lost", "duplicated")
# The order of the tables: the crash windows first, as the issue lists the cases.
ORDER = (
    "test_crash_windows",
    "test_fencing",
    "test_postgres_faults",
    "test_dead_lease",
    "test_failover",
    "test_soak",
    "test_backlog",
    "test_unexpected_errors",
)


def _order(result: dict[str, Any]) -> int:
    test = result.get("test", "")
    return next((i for i, name in enumerate(ORDER) if f"/{name}.py::" in test), len(ORDER))


KNOWN = {"case", "expected", "observed", "test", *NUMBER_COLUMNS}


def render(results: list[dict[str, Any]], verdicts: dict[str, str], meta: dict[str, Any]) -> str:
    results = sorted(results, key=_order)
    lines = [
        "# Reliability",
        "",
        "What the relay does when it is killed, paused, cut off from its database or fed a "
        "bad upstream, measured by the fault suite in `tests/chaos/` (part of the normal "
        "`pytest` run and so of `.ci/run`). Generated by `python -m tests.chaos.report`; "
        "do not edit by hand.",
        "",
        "## Fault runs",
        "",
        "| case | expected | observed | result |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        verdict = verdicts.get(r.get("test", ""), "?")
        lines.append(
            f"| {_cell(r['case'])} | {_cell(r['expected'])} | {_cell(r['observed'])} | {verdict} |"
        )
    lines += [
        "",
        "## Numbers",
        "",
        "Messages accepted (got 250), delivered (taken by the upstream at least once), lost "
        "(acknowledged and never delivered, bounced or expired) and duplicated (extra copies "
        "the upstream took), per run:",
        "",
        "| case | accepted | delivered | lost | duplicated | more |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        more = ", ".join(f"{k} {v}" for k, v in r.items() if k not in KNOWN)
        lines.append(
            f"| {_cell(r['case'])} | "
            + " | ".join(str(r.get(k, "")) for k in NUMBER_COLUMNS)
            + f" | {_cell(more)} |"
        )
    lines += [
        "",
        "Duplicates are allowed only in the at-least-once windows the README documents: a "
        "commit that landed without its 250 (the client sends the message again) and an "
        "upstream 250 not yet recorded (the delivery is sent again after its lease). Every "
        "run checks that each duplicate is one of those, and that no row is half-written "
        "(a message without its deliveries or accepted event, a finished delivery without "
        "its event or still holding a lease, a body kept after every delivery is final).",
        "",
        "## What the runs found",
        "",
        *[f"- {f}" for f in FINDINGS],
        "",
        "## Covered elsewhere in the suite",
        "",
        "| case | tests |",
        "| --- | --- |",
    ]
    for c in COVERED:
        tests = "<br>".join(f"`{t}`" for t in c.tests)
        lines.append(f"| {_cell(c.case)} | {tests} |")
    lines += [
        "",
        "## How to run it again",
        "",
        "```console",
        f"$ {meta['command']}",
        "```",
        "",
        "runs `pytest tests/chaos` with `BOUNCE_RELAY_RELIABILITY_OUT` set and rewrites this "
        "file. `--iterations N` sets the crashes per window (`BOUNCE_RELAY_CHAOS_ITERATIONS`, "
        "8 by default), `--soak N` the soak's messages (`BOUNCE_RELAY_CHAOS_SOAK`, 2,000); "
        "`BOUNCE_RELAY_CHAOS_BACKLOG` the backlog's (3,000). The database is the server "
        "named by `BOUNCE_RELAY_TEST_DSN` (else an embedded one); the PostgreSQL restart case "
        "always starts a private server from the pgserver wheel and restarts only that one.",
        "",
        "## This run",
        "",
        f"- date: {meta['date']}",
        f"- commit: {meta['commit']}",
        f"- machine: {meta['machine']}",
        f"- suite: {meta['tests']} tests, {meta['seconds']:.0f} s, exit status {meta['status']}",
        *[f"- {name}: {version}" for name, version in meta["versions"]],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, help="crashes per window")
    parser.add_argument("--soak", type=int, help="messages in the soak")
    parser.add_argument("--output", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, junit = Path(tmp) / "results.jsonl", Path(tmp) / "junit.xml"
        started = time.monotonic()
        status = _run_suite(out, junit, args.iterations, args.soak)
        seconds = time.monotonic() - started
        results = (
            [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        )
        verdicts = _outcomes(junit)
    command = "python -m tests.chaos.report" + "".join(
        f" --{name} {shlex.quote(str(value))}"
        for name, value in (("iterations", args.iterations), ("soak", args.soak))
        if value is not None
    )
    meta = {
        "command": command,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": _machine(),
        "tests": len(verdicts),
        "seconds": seconds,
        "status": status,
        "versions": _versions(),
    }
    args.output.write_text(render(results, verdicts, meta), encoding="utf-8")
    print(f"wrote {args.output} ({len(results)} cases, suite exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())

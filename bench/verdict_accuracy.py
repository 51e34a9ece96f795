"""How right the relay's verdicts are on labelled real replies and bounce messages.

Every labelled reply goes through ``policies.verdict`` with the rules of the shipped
``config.toml`` (or ``--config``), as a first attempt to a fresh address, exactly as
``bounce-relay classify`` decides it; every bounce message through ``policies.dsn`` and
the same verdict, as ``bounce-relay dsn parse`` reads it. Printed:

- replies, per corpus: kind and category right, good addresses suppressed (false
  suppressions, each listed), dead addresses not suppressed (missed, each listed),
  suppression recall, and the category confusion matrix (labelled rows, decided columns);
  for a corpus with template groups (rows of one provider reply, ``group``), how many
  groups keep one template (each split group listed with its templates);
- bounce messages: recipients found of those the corpus lists, false suppressions
  (a suppression where the corpus' reason is not about the recipient), missed ones.

    python bench/verdict_accuracy.py                       # the repository's corpora
    python bench/verdict_accuracy.py --replies FILE.jsonl  # another labelled corpus
    python bench/verdict_accuracy.py --matrix              # with the confusion matrices

Labelled replies are JSON lines with ``reply``, ``kind`` (hard/soft), ``category`` and
``suppress_recipient`` (tests/policies/data/smtp-replies.jsonl, tests/data/*.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from policies.addresses import domain_of  # noqa: E402
from policies.dsn import MalformedBounce, NotAMessage, parse_bounce  # noqa: E402
from policies.outcome import ReportedDecision  # noqa: E402
from policies.smtp_reply import parse_reply  # noqa: E402
from policies.templates import template_of  # noqa: E402
from policies.verdict import Attempt, NotJudged, Reported, VerdictRules, verdict  # noqa: E402
from relay.config import load_config  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # a first attempt; no schedule is printed
DATA = REPO / "tests" / "policies" / "data"
PUBLIC = REPO / "tests" / "data"
# sisimai's reasons that speak against the recipient (its hard_bounce, plus a disabled
# mailbox, which suppresses here: tests/policies/data/dsn/README.md).
RECIPIENT_REASONS = {"userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"}
# A reply sent to a provider's users is judged with a domain of that provider, so that
# provider hints apply as they would.
PROVIDER_DOMAINS = {
    "gmail": "gmail.com",
    "yahoo": "yahoo.com",
    "outlook_com": "outlook.com",
    "exchange_online": "outlook.com",
    "microsoft": "outlook.com",
    "icloud": "icloud.com",
}


@dataclass
class ReplyScore:
    name: str
    rows: int = 0
    kind_right: int = 0
    category_right: int = 0
    dead: int = 0
    dead_suppressed: int = 0
    false_suppressions: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    matrix: Counter[tuple[str, str]] = field(default_factory=Counter)
    # the corpus' template groups (rows of one provider reply): group -> row id -> template
    groups: dict[str, dict[str, str]] = field(default_factory=dict)

    def lines(self, with_matrix: bool) -> Iterable[str]:
        n = max(self.rows, 1)
        recall = self.dead_suppressed / self.dead if self.dead else 1.0
        yield (
            f"verdict_accuracy corpus={self.name} replies={self.rows} "
            f"kind={self.kind_right / n:.1%} category={self.category_right / n:.1%} "
            f"false_suppressions={len(self.false_suppressions)} "
            f"missed={len(self.missed)} suppression_recall={recall:.1%}"
        )
        groups = {g: rows for g, rows in self.groups.items() if len(rows) > 1}
        if groups:
            split = {g: rows for g, rows in groups.items() if len(set(rows.values())) > 1}
            yield (
                f"verdict_templates corpus={self.name} groups={len(groups)} "
                f"intact={len(groups) - len(split)}"
            )
            for group, rows in sorted(split.items()):
                yield f"  split group: {group}: " + "; ".join(
                    f"{row_id}={template!r}" for row_id, template in sorted(rows.items())
                )
        for item in self.false_suppressions:
            yield f"  false suppression: {item}"
        for item in self.missed:
            yield f"  missed: {item}"
        if with_matrix:
            yield from _matrix(self.matrix)


def score_replies(name: str, rows: Iterable[dict[str, Any]], rules: VerdictRules) -> ReplyScore:
    score = ReplyScore(name)
    for row in rows:
        if row.get("kind") not in ("hard", "soft"):
            continue
        domain = PROVIDER_DOMAINS.get(row.get("provider", ""), "example.com")
        decision = verdict(parse_reply(row["reply"]), Attempt(domain, NOW), rules)
        kind, category = decision.verdict.kind.value, decision.verdict.category.value
        score.rows += 1
        score.kind_right += kind == row["kind"]
        score.category_right += category == row["category"]
        score.matrix[row["category"], category] += 1
        if row.get("group"):
            score.groups.setdefault(row["group"], {})[row["id"]] = template_of(row["reply"])
        head = f"{row.get('id', '?')} {row['reply'].splitlines()[0][:100]!r} ({category})"
        dead = bool(row.get("suppress_recipient"))
        score.dead += dead
        if decision.suppress and not dead:
            score.false_suppressions.append(head)
        elif dead and decision.suppress:
            score.dead_suppressed += 1
        elif dead:
            score.missed.append(head)
    return score


def score_bounces(directory: Path, rules: VerdictRules) -> list[str]:
    expected: dict[str, list[dict[str, Any]]] = {}
    for line in (directory / "expected.jsonl").read_text().splitlines():
        item = json.loads(line)
        expected.setdefault(item["file"], []).append(item)
    listed = found = false_suppressions = missed = 0
    problems: list[str] = []
    for name, wanted in sorted(expected.items()):
        wanted.sort(key=lambda w: w["index"])
        try:
            parsed = parse_bounce((directory / name).read_bytes())
        except (NotAMessage, MalformedBounce):
            parsed = None
        results = [r for r in parsed.recipients if r.action != "delivered"] if parsed else []
        listed += len(wanted)
        found += min(len(results), len(wanted))
        for want, result in zip(wanted, results, strict=False):
            facts = Reported.of(
                result, domain_of(result.recipient or ""), loop=bool(parsed and parsed.loop)
            )
            decision = verdict(result.reply(), facts, rules)
            suppress = isinstance(decision, ReportedDecision) and decision.suppress
            dead = want.get("reason") in RECIPIENT_REASONS
            if suppress and not dead and want.get("reason") != "feedback":
                false_suppressions += 1
                problems.append(f"  false suppression: {name} #{want['index']} ({want['reason']})")
            elif dead and not suppress:
                missed += 1
                why = decision.reason if isinstance(decision, NotJudged) else "not suppressed"
                problems.append(f"  missed: {name} #{want['index']} ({want['reason']}): {why}")
    share = found / listed if listed else 1.0
    return [
        f"verdict_accuracy corpus=dsn recipients={listed} found={share:.1%} "
        f"false_suppressions={false_suppressions} missed={missed}",
        *problems,
    ]


def _matrix(matrix: Counter[tuple[str, str]]) -> Iterable[str]:
    labelled = sorted({a for a, _ in matrix})
    decided = sorted({b for _, b in matrix})
    yield "  | labelled \\ decided | " + " | ".join(decided) + " |"
    yield "  | --- |" + " --- |" * len(decided)
    for a in labelled:
        cells = [str(matrix[a, b] or "") for b in decided]
        yield f"  | {a} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config.toml")
    parser.add_argument("--replies", type=Path, action="append", help="labelled JSON lines")
    parser.add_argument("--dsn", type=Path, default=DATA / "dsn", help="bounce messages")
    parser.add_argument("--matrix", action="store_true", help="print confusion matrices")
    args = parser.parse_args(argv)
    rules = load_config(args.config).rules
    corpora = args.replies or [DATA / "smtp-replies.jsonl", *sorted(PUBLIC.glob("*.jsonl"))]
    for path in corpora:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for line in score_replies(path.stem, rows, rules).lines(args.matrix):
            print(line)
    for line in score_bounces(args.dsn, rules):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

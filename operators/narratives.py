"""Plain words for reviewers, built only from a cluster's numbers, its typical events and its rules."""

from __future__ import annotations

from typing import Any


def rule_narrative(description: str, m: dict[str, float]) -> str:
    return (f"Transactions with {description}: {m['support']:,} in the window, {m['precision']:.0%} of them in this "
            f"cluster, covering {m['coverage']:.0%} of it; labelled fraud rate {m['fraud_rate']:.0%} "
            f"({m['lift']:.1f}x the base rate).")


def cluster_narrative(risk: dict[str, Any], total: int, top_events: list[str], rules: list[dict[str, Any]],
                      status: str, previous_size: int | None, distinctive: list[str] | None = None,
                      unseen: list[str] | None = None, novelty: float | None = None) -> str:
    """A cluster in a few sentences: size, labels, money, click-streams (what sets them apart, what the
    encoder never saw), its best rule, its lineage."""
    labels = (f"Of the {risk['labelled']:,} already labelled, {risk['fraud']:,} are confirmed fraud "
              f"({risk['fraud_rate']:.0%}; at least {risk['fraud_rate_lower']:.0%} at 95% confidence, "
              f"{risk['lift']:.1f}x the window's rate)." if risk["labelled"] else
              "None of them is labelled yet, so their risk cannot be scored from labels.")
    parts = [
        f"{risk['size']:,} transactions ({risk['size'] / max(total, 1):.1%} of the window) behave alike.",
        labels,
        f"{risk['declined_share']:.0%} were declined; together they moved {risk['amount']:,.2f}.",
    ]
    if top_events:
        parts.append("Their click-streams are dominated by " + ", ".join(e.replace("_", " ") for e in top_events) + ".")
    if distinctive:
        parts.append("Compared with the rest of the window they stand out by " +
                     ", ".join(e.replace("_", " ") for e in distinctive) + ".")
    if unseen:
        parts.append("They use event types the behaviour encoder never saw in training: " + ", ".join(unseen) + ".")
    if rules:
        best = max(rules, key=lambda x: x["precision"])
        parts.append(f"Most of them can be found with: {best['description']} "
                     f"(matches {best['support']:,}, {best['precision']:.0%} of them in this cluster, "
                     f"{best['coverage']:.0%} of the cluster).")
    if previous_size is None:
        far = f", {novelty:.2f} away from the nearest earlier cluster" if novelty is not None else ""
        parts.append(f"The cluster is new in this run{far}.")
    else:
        parts.append(f"It continues a cluster of {previous_size:,} in the previous run ({status}).")
    return " ".join(parts)

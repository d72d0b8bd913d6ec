"""Short conjunctive rules over expert features that pick out a cluster's members.

Candidate predicates are thresholds at data quantiles (numeric), true/false (bool) and equality
(categorical). A beam search grows conjunctions of up to `max_conditions` predicates, scored by
F-beta of "rule matches" against "is a member" (beta < 1 favours precision, as reviewers act on
what a rule flags). Sequential covering then finds further rules for members the first missed.
Every rule renders as a DuckDB predicate over `transactions` and as plain words; thresholds are
values from the data, written exactly, so SQL and memory agree row for row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.operators.features import ExpertFeatureSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predicate:
    column: str
    op: str  # "<=", ">", "=", "is_true", "is_false"
    value: float | str | None = None

    def sql(self) -> str:
        column = '"' + self.column.replace('"', '""') + '"'
        if self.op == "is_true":
            return f"{column} IS TRUE"
        if self.op == "is_false":
            return f"{column} IS FALSE"
        if self.op == "=":
            return f"{column} = '" + str(self.value).replace("'", "''") + "'"
        return f"{column} {self.op} {float(self.value)!r}"

    def words(self) -> str:
        name = self.column.replace("_", " ")
        if self.op == "is_true":
            return f"{name}: yes"
        if self.op == "is_false":
            return f"{name}: no"
        if self.op == "=":
            return f"{name} is {self.value}"
        return f"{name} {'at most' if self.op == '<=' else 'above'} {_short(float(self.value))}"

    def mask(self, table: pa.Table) -> np.ndarray:
        column = table.column(self.column)
        if self.op in ("is_true", "is_false"):
            values = pc.fill_null(column, not (self.op == "is_true")).to_numpy(zero_copy_only=False).astype(bool)
            return values if self.op == "is_true" else ~values
        if self.op == "=":
            return pc.fill_null(pc.equal(column, self.value), False).to_numpy(zero_copy_only=False)
        compare = pc.less_equal if self.op == "<=" else pc.greater
        return pc.fill_null(compare(pc.cast(column, pa.float64()), float(self.value)), False).to_numpy(
            zero_copy_only=False)


@dataclass(frozen=True)
class Rule:
    predicates: tuple[Predicate, ...]

    def sql(self) -> str:
        return " AND ".join(p.sql() for p in self.predicates) or "TRUE"

    def words(self) -> str:
        return ", ".join(p.words() for p in self.predicates)


@dataclass(frozen=True)
class RuleFit:
    rule: Rule
    precision: float  # members among matches
    coverage: float  # share of the cluster's members matched
    support: int  # matches


@dataclass(frozen=True)
class RuleSearch:
    max_conditions: int = 3
    beam_width: int = 8
    max_rules: int = 3
    beta: float = 0.5
    quantiles: int = 20
    min_coverage: float = 0.05  # a further rule must explain at least this share of the cluster
    # above this many rows the search runs on a seeded sample (members first), counts reweighted;
    # published metrics are recomputed exactly in SQL, so only the choice of rule is approximate
    max_rows: int = 60_000
    seed: int = 0


def candidate_predicates(table: pa.Table, spec: ExpertFeatureSpec, quantiles: int = 20) -> list[Predicate]:
    out: list[Predicate] = []
    for name in spec.numeric:
        values = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        cuts = np.unique(np.quantile(values, np.linspace(0, 1, quantiles + 1)[1:-1], method="lower"))
        for cut in cuts:
            out += [Predicate(name, "<=", float(cut)), Predicate(name, ">", float(cut))]
    for name in spec.boolean:
        out += [Predicate(name, "is_true"), Predicate(name, "is_false")]
    for name in spec.categorical:
        for value in sorted(v for v in pc.unique(table.column(name)).to_pylist() if v is not None):
            out.append(Predicate(name, "=", value))
    return out


def induce_rules(table: pa.Table, member: np.ndarray, candidates: list[Predicate],
                 search: RuleSearch = RuleSearch()) -> list[RuleFit]:
    """Up to `max_rules` rules, each found by beam search on the members the earlier ones missed."""
    member = np.asarray(member, dtype=bool)
    if not member.any() or not candidates:
        return []
    started = time.perf_counter()
    rows, member_weight, other_weight = _search_sample(member, search)
    if rows is not None:
        table, member = table.take(pa.array(rows)), member[rows]
    masks = np.stack([p.mask(table) for p in candidates])
    if log.isEnabledFor(logging.INFO):
        sizes = {"candidates": len(candidates), "rows": int(member.size), "members": int(member.sum())}
        log.info("rule search: %d candidates over %d rows%s, %d members", sizes["candidates"], sizes["rows"],
                 " (sampled)" if rows is not None else "", sizes["members"],
                 extra={"elapsed_s": round(time.perf_counter() - started, 3), "sizes": sizes})
    weights = np.where(member, member_weight, other_weight)
    n_members = member.sum() * member_weight
    remaining = member.copy()
    fits: list[RuleFit] = []
    for _ in range(search.max_rules):
        if remaining.sum() * member_weight < search.min_coverage * n_members:
            break
        best = _beam_search(masks, member, remaining, search, member_weight, other_weight)
        if best is None:
            break
        picked, matched = best
        covered_now = (matched & remaining).sum() * member_weight
        if covered_now < search.min_coverage * n_members:
            break
        support = float(weights[matched].sum())
        in_cluster = (matched & member).sum() * member_weight
        fits.append(RuleFit(Rule(tuple(candidates[i] for i in picked)), precision=float(in_cluster / max(support, 1)),
                            coverage=float(in_cluster / n_members), support=int(round(support))))
        remaining &= ~matched
        log.info("rule %d/%d: %d conditions, precision %.3f, coverage %.3f", len(fits), search.max_rules,
                 len(picked), fits[-1].precision, fits[-1].coverage,
                 extra={"progress": {"done": len(fits), "total": search.max_rules},
                        "elapsed_s": round(time.perf_counter() - started, 3)})
    return fits


def _search_sample(member: np.ndarray, search: RuleSearch) -> tuple[np.ndarray | None, float, float]:
    """Rows to search on and the weight of a sampled member and non-member (None: use every row)."""
    n = member.size
    if n <= search.max_rows:
        return None, 1.0, 1.0
    rng = np.random.default_rng(search.seed)
    members, others = np.flatnonzero(member), np.flatnonzero(~member)
    keep_members = members if members.size <= search.max_rows // 2 else rng.choice(members, search.max_rows // 2,
                                                                                     replace=False)
    keep_others = rng.choice(others, min(others.size, search.max_rows - keep_members.size), replace=False)
    rows = np.sort(np.concatenate([keep_members, keep_others]))
    return rows, members.size / keep_members.size, others.size / max(keep_others.size, 1)


def _beam_search(masks: np.ndarray, member: np.ndarray, target: np.ndarray, search: RuleSearch,
                 member_weight: float = 1.0, other_weight: float = 1.0) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Grow conjunctions; score F-beta against `target` (uncovered members), precision against all members."""
    beta2 = search.beta ** 2
    n_target = target.sum() * member_weight
    beam: list[tuple[tuple[int, ...], np.ndarray]] = [((), np.ones(masks.shape[1], dtype=bool))]
    best: tuple[float, tuple[int, ...], np.ndarray] | None = None
    for depth in range(search.max_conditions):
        scored: list[tuple[float, tuple[int, ...], np.ndarray]] = []
        for picked, matched in beam:
            extended = masks & matched[None, :]
            hits = (extended & target[None, :]).sum(axis=1) * member_weight
            # matches that are other members are not errors: they are covered by an earlier rule
            wrong = (extended & ~member[None, :]).sum(axis=1) * other_weight
            precision = hits / np.maximum(hits + wrong, 1)
            recall = hits / max(n_target, 1)
            f = (1 + beta2) * precision * recall / np.maximum(beta2 * precision + recall, 1e-12)
            for i in np.argsort(-f, kind="stable")[: search.beam_width * 2]:
                if i in picked or f[i] <= 0:
                    continue
                scored.append((float(f[i]), tuple(sorted(picked + (int(i),))), extended[i]))
        if not scored:
            break
        unique: dict[tuple[int, ...], tuple[float, tuple[int, ...], np.ndarray]] = {}
        for item in sorted(scored, key=lambda s: (-s[0], s[1])):
            unique.setdefault(item[1], item)
        ranked = list(unique.values())[: search.beam_width]
        if best is None or ranked[0][0] > best[0] + 1e-9:
            best = ranked[0]
        beam = [(picked, matched) for _, picked, matched in ranked]
        log.debug("beam depth %d/%d: best F %.3f", depth + 1, search.max_conditions, best[0],
                  extra={"progress": {"done": depth + 1, "total": search.max_conditions}})
    return None if best is None else (best[1], best[2])


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"

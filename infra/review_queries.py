"""The review app's reads over the catalog, and its one write (a verdict, through infra/reviews.py).

`ReviewCatalog` keeps one DuckDB catalog (infra/catalog.py) open and rebuilds it when the set of
commit manifests changes, so a newly published run shows up without a restart and a half-written
run (no manifest) never does. Each query runs on its own cursor, so request threads can read at
once; every value a user sends is a bound parameter, and identifiers are checked against their
format (`valid_cluster_key`, `valid_transaction_id`, `valid_partition`) before any query runs.

When the lake cannot be read, a query raises `LakeUnavailable` (the app answers 503 with a page
that says so) and the last good catalog keeps being served for as long as its files can be read.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable

import duckdb
import numpy as np

from lakelens.infra.catalog import open_catalog
from lakelens.infra.contracts import REVIEWS_DIR, VERDICTS
from lakelens.infra.manifests import COMMITS
from lakelens.infra.reviews import Review, record_review
from lakelens.infra.storage import Lake

log = logging.getLogger("lakelens.review_queries")

CLUSTER_KEY = re.compile(r"ck-[0-9a-f]{6,40}")
TRANSACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
PARTITION = re.compile(r"dt=\d{4}-\d{2}-\d{2}")
LINEAGE = ("new", "growing", "stable", "shrinking", "gone")
VERDICT_FILTERS = (*VERDICTS, "none")
# ORDER BY clauses by name: users choose a name, never SQL
SORTS = {
    "risk": "fraud_rate_lower DESC, size DESC, cluster_key",
    "size": "size DESC, fraud_rate_lower DESC, cluster_key",
    "trend": "coalesce(trend, 'Infinity'::DOUBLE) DESC, fraud_rate_lower DESC, cluster_key",
}
MAX_COMMENT = 4000
# the visible runs' members joined with their transactions, sorted by (run, cluster, probability): built in
# memory once per catalog build so that member pages and click-streams need no scan of the lake
MEMBERS_TABLE = "_review_members"
EMERGING_COLUMNS = ("cluster_key", "partition", "size", "previous_size", "lineage_status", "novelty",
                    "fraud_rate_lower", "distinctive_event_types", "unseen_event_types", "latest_verdict")


class LakeUnavailable(RuntimeError):
    """The lake (or a file the catalog names) cannot be read right now."""


def valid_cluster_key(value: str) -> bool:
    return bool(CLUSTER_KEY.fullmatch(value or ""))


def valid_transaction_id(value: str) -> bool:
    return bool(TRANSACTION_ID.fullmatch(value or "")) and ".." not in value


def valid_partition(value: str) -> bool:
    if not PARTITION.fullmatch(value or ""):
        return False
    try:
        date.fromisoformat(value[3:])
    except ValueError:
        return False
    return True


_READ_ERRORS = (duckdb.IOException, duckdb.HTTPException, OSError)


@dataclass
class Snapshot:
    """One catalog build: the views as they were when the manifests last changed."""

    con: duckdb.DuckDBPyConnection
    tables: frozenset[str]
    fingerprint: tuple
    built_at: float
    reviews_table_empty: bool
    stale: str | None = None  # the error that keeps us from a newer build, if any
    members_ready: bool = False  # MEMBERS_TABLE is built (in the background after each build)
    _maps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _map_lock: threading.Lock = field(default_factory=threading.Lock)
    _memo: OrderedDict = field(default_factory=OrderedDict)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock)

    def memo(self, key: tuple, compute: Callable[[], Any], size: int = 4096) -> Any:
        """Published runs never change, so what a build answered once it answers again (a bounded LRU).

        Values are shared between requests: callers copy before changing them.
        """
        with self._memo_lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        value = compute()
        with self._memo_lock:
            self._memo[key] = value
            while len(self._memo) > size:
                self._memo.popitem(last=False)
        return value

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self.con.cursor()
        cursor.execute("SET TimeZone = 'UTC'")
        return cursor

    @property
    def has_clusters(self) -> bool:
        return {"flagged_clusters", "clusters", "txn_clusters"} <= self.tables

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.cursor()
        try:
            # through Arrow: timestamps with a zone convert without pytz, and it is faster for wide rows
            return cursor.execute(sql, params or []).to_arrow_table().to_pylist()
        except _READ_ERRORS as exc:
            raise LakeUnavailable(f"the lake cannot be read: {type(exc).__name__}: {_short(exc)}") from exc
        finally:
            cursor.close()


class ReviewCatalog:
    """The published behaviour-clustering results, for people reviewing flagged clusters."""

    def __init__(self, lake: Lake, recheck_s: float = 2.0, precompute: bool = True) -> None:
        self.lake = lake
        self.recheck_s = recheck_s
        self.precompute = precompute
        self._snapshot: Snapshot | None = None
        self._checked_at = 0.0
        self._build_lock = threading.Lock()
        self._reviews: tuple[int, float, dict[str, list[dict[str, Any]]]] | None = None
        self._reviews_lock = threading.Lock()

    # -- the catalog snapshot ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current catalog, rebuilt first if the lake's commits changed since the last look."""
        current = self._snapshot
        if current is not None and time.monotonic() - self._checked_at < self.recheck_s:
            return current
        # one thread checks and rebuilds; the others keep reading the previous build meanwhile
        if not self._build_lock.acquire(blocking=current is None):
            return current  # type: ignore[return-value]
        try:
            current = self._snapshot
            if current is not None and time.monotonic() - self._checked_at < self.recheck_s:
                return current
            try:
                fingerprint = self._fingerprint()
                if current is None or fingerprint != current.fingerprint or self._reviews_appeared(current):
                    current = self._build(fingerprint)
                    self._snapshot = current
                else:
                    current.stale = None
            except Exception as exc:  # noqa: BLE001 - any storage failure: keep serving what we have
                if current is None:
                    raise LakeUnavailable(f"the lake {self.lake.uri()} cannot be read: {_short(exc)}") from exc
                current.stale = _short(exc)
                log.warning("catalog refresh failed, serving the previous one: %s", current.stale)
            self._checked_at = time.monotonic()
            return current
        finally:
            self._build_lock.release()

    def invalidate(self) -> None:
        """Look at the lake again on the next request (after this app wrote a verdict)."""
        self._checked_at = 0.0
        self._reviews = None

    def _all_reviews(self, snap: Snapshot) -> dict[str, list[dict[str, Any]]]:
        """Every verdict by cluster key, newest first: read at most once per `recheck_s` (verdicts written by
        this app show at once; those written elsewhere, e.g. by `lakelens review`, within `recheck_s`)."""
        cached = self._reviews
        if cached is not None and cached[0] == id(snap) and time.monotonic() - cached[1] < self.recheck_s:
            return cached[2]
        with self._reviews_lock:
            cached = self._reviews
            if cached is not None and cached[0] == id(snap) and time.monotonic() - cached[1] < self.recheck_s:
                return cached[2]
            by_key: dict[str, list[dict[str, Any]]] = {}
            if "cluster_reviews" in snap.tables:
                for row in snap.rows("""SELECT review_id, cluster_key, run_id, verdict, reviewer, reviewed_at, comment
                                        FROM cluster_reviews ORDER BY reviewed_at DESC, review_id DESC"""):
                    by_key.setdefault(row["cluster_key"], []).append(row)
            self._reviews = (id(snap), time.monotonic(), by_key)
            return by_key

    def _with_verdict(self, snap: Snapshot, row: dict[str, Any]) -> dict[str, Any]:
        latest = (self._all_reviews(snap).get(row["cluster_key"]) or [None])[0]
        return {**row, "latest_verdict": latest and latest["verdict"], "latest_reviewer": latest and latest["reviewer"],
                "latest_reviewed_at": latest and latest["reviewed_at"]}

    def _fingerprint(self) -> tuple:
        commits = []
        for job in self.lake.list_dirs("runs"):
            commits += [(e.path, e.size) for e in self.lake.list_files(f"runs/{job}/{COMMITS}", suffix=".json")]
        if not commits and not self.lake.exists(""):
            raise LakeUnavailable(f"no lake at {self.lake.uri()}")
        return tuple(commits)

    def _reviews_appeared(self, snap: Snapshot) -> bool:
        # the catalog holds an empty table until the first verdict file exists; then it becomes a view
        return snap.reviews_table_empty and bool(self.lake.list_files(REVIEWS_DIR, suffix=".parquet"))

    def _build(self, fingerprint: tuple) -> Snapshot:
        began = time.perf_counter()
        con = open_catalog(self.lake)
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
        snap = Snapshot(con=con, tables=frozenset(kinds), fingerprint=fingerprint, built_at=time.time(),
                        reviews_table_empty=kinds.get("cluster_reviews") == "BASE TABLE")
        log.info("catalog built in %.2f s: %d published runs", time.perf_counter() - began, len(fingerprint))
        if self.precompute and snap.has_clusters:
            threading.Thread(target=self._warm, args=(snap,), daemon=True, name="lakelens-map-warm").start()
        return snap

    def _warm(self, snap: Snapshot) -> None:
        """After a build: the newest run's cluster map, then the members table."""
        try:
            for partition in self.partitions(snap)[:1]:
                for row in snap.rows("SELECT DISTINCT run_id FROM flagged_clusters WHERE partition = ?", [partition]):
                    self.cluster_map(row["run_id"], snap)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation only
            log.warning("precomputing the cluster map failed: %s", _short(exc))
        if "transactions" not in snap.tables:
            return
        began = time.perf_counter()
        cursor = snap.cursor()
        try:
            cursor.execute(f"""CREATE TABLE {MEMBERS_TABLE} AS
                SELECT x.run_id, x.cluster_key, x.transaction_id, x.probability, x.outlier_score,
                       x.top_events[1].event_type AS most_attended_event,
                       x.top_events[1].weight AS most_attended_weight, x.top_events,
                       t.* EXCLUDE (transaction_id)
                FROM txn_clusters x JOIN transactions t USING (transaction_id)
                WHERE x.cluster_key IS NOT NULL
                ORDER BY x.run_id, x.cluster_key, x.probability DESC, x.transaction_id""")
            snap.members_ready = True
            log.info("members table built in %.1f s", time.perf_counter() - began)
        except Exception as exc:  # noqa: BLE001 - the pages fall back to reading the lake
            log.warning("building the members table failed: %s", _short(exc))
        finally:
            cursor.close()

    # -- reads ------------------------------------------------------------------------------------

    def partitions(self, snap: Snapshot | None = None) -> list[str]:
        """Partitions with a published behavior-clusters run, newest first."""
        snap = snap or self.snapshot()
        if not snap.has_clusters:
            return []
        return [r["partition"] for r in snap.rows(
            "SELECT DISTINCT r.partition FROM clusters c JOIN runs r USING (run_id) ORDER BY 1 DESC")]

    def list_clusters(self, partition: str | None = None, lineage: str | None = None, verdict: str | None = None,
                      sort: str = "risk", limit: int = 500) -> dict[str, Any]:
        """The flagged clusters of one partition (default: the newest), filtered and sorted."""
        if partition is not None and not valid_partition(partition):
            raise ValueError(f"partition must look like dt=YYYY-MM-DD; got {partition!r}")
        if lineage is not None and lineage not in LINEAGE:
            raise ValueError(f"lineage_status must be one of {', '.join(LINEAGE)}")
        if verdict is not None and verdict not in VERDICT_FILTERS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICT_FILTERS)}")
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        snap = self.snapshot()
        partitions = self.partitions(snap)
        chosen = partition or (partitions[0] if partitions else None)
        result = {"partition": chosen, "partitions": partitions, "clusters": [],
                  "emerging": self.emerging(snap, chosen), "stale": snap.stale}
        if chosen is None:
            return result
        rows = snap.memo(("list", chosen, lineage, sort), lambda: snap.rows(f"""
            SELECT partition, run_id, cluster_key, size, previous_size, labelled, fraud, fraud_rate,
                   fraud_rate_lower, lift, declined_share, amount, lineage_status, top_event_types,
                   CASE WHEN previous_size > 0 THEN (size - previous_size) / previous_size END AS trend
            FROM flagged_clusters WHERE partition = ? AND (? IS NULL OR lineage_status = ?)
            ORDER BY {SORTS[sort]}""", [chosen, lineage, lineage]))
        rows = [self._with_verdict(snap, row) for row in rows]
        if verdict is not None:
            rows = [r for r in rows if r["latest_verdict"] == (None if verdict == "none" else verdict)]
        result["clusters"] = rows[:int(limit)]
        return result

    def emerging(self, snap: Snapshot | None = None, partition: str | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
        """Clusters of the `emerging_clusters` view ("needs a look"), when the catalog has one.

        The view comes from another job and may lack columns or fail to read: then this lists nothing.
        """
        snap = snap or self.snapshot()
        if "emerging_clusters" not in snap.tables:
            return []
        try:
            have = [r["column_name"] for r in snap.rows("DESCRIBE emerging_clusters")]
            shown = [c for c in EMERGING_COLUMNS if c in have] or have[:8]
            columns = ", ".join('"' + c.replace('"', '""') + '"' for c in shown)
            where = "WHERE partition = ?" if partition and "partition" in have else "WHERE ? IS NULL"
            rows = snap.memo(("emerging", partition, limit), lambda: snap.rows(
                f"SELECT {columns} FROM emerging_clusters {where} LIMIT ?",
                [partition if "partition" in have else None, int(limit)]))
            if "latest_verdict" in shown and "cluster_key" in shown:
                rows = [{**r, "latest_verdict": self._with_verdict(snap, r)["latest_verdict"]} for r in rows]
            return rows
        except (duckdb.Error, LakeUnavailable) as exc:
            log.warning("emerging_clusters could not be read: %s", _short(exc))
            return []

    def cluster(self, cluster_key: str) -> dict[str, Any] | None:
        """The cluster as the newest published run that has it sees it; None if no run has it."""
        if not valid_cluster_key(cluster_key):
            return None
        snap = self.snapshot()
        if not snap.has_clusters:
            return None
        row = snap.memo(("cluster", cluster_key), lambda: self._cluster_row(snap, cluster_key))
        return None if row is None else self._with_verdict(snap, row)

    def _cluster_row(self, snap: Snapshot, cluster_key: str) -> dict[str, Any] | None:
        for view in ("clusters", "clusters_all_runs"):
            if view not in snap.tables:
                continue
            found = snap.rows(f"""
                SELECT r.partition, r.committed_at, c.* FROM {view} c JOIN runs r USING (run_id)
                WHERE c.cluster_key = ? ORDER BY r.committed_at DESC, r.partition DESC LIMIT 1""", [cluster_key])
            if found:
                row = found[0]
                row["trend"] = ((row["size"] - row["previous_size"]) / row["previous_size"]
                                if row.get("previous_size") else None)
                row["visible"] = view == "clusters"
                return row
        return None

    def rules(self, cluster_key: str, run_id: str) -> list[dict[str, Any]]:
        snap = self.snapshot()
        table = "cluster_rules" if "cluster_rules" in snap.tables else None
        if table is None:
            return []
        if "cluster_rules_all_runs" in snap.tables:
            table = "cluster_rules_all_runs"
        return snap.memo(("rules", cluster_key, run_id), lambda: snap.rows(f"""
            SELECT rule_id, sql_predicate, description, precision, coverage, support, fraud_rate, lift, narrative
            FROM {table} WHERE cluster_key = ? AND run_id = ? ORDER BY rule_id""", [cluster_key, run_id]))

    def history(self, cluster_key: str) -> list[dict[str, Any]]:
        """One point per daily run (the newest run of each partition), oldest first."""
        snap = self.snapshot()
        if "cluster_history" not in snap.tables:
            return []
        return snap.memo(("history", cluster_key), lambda: snap.rows("""
            SELECT partition, committed_at, run_id, size, previous_size, fraud_rate, fraud_rate_lower, lift, flagged,
                   lineage_status
            FROM cluster_history WHERE cluster_key = ?
            QUALIFY row_number() OVER (PARTITION BY partition ORDER BY committed_at DESC) = 1
            ORDER BY partition""", [cluster_key]))

    def reviews(self, cluster_key: str) -> list[dict[str, Any]]:
        """Every verdict on the cluster, newest first."""
        return list(self._all_reviews(self.snapshot()).get(cluster_key, []))

    def members(self, cluster_key: str, run_id: str, page: int = 1, page_size: int = 25) -> dict[str, Any]:
        """One page of a cluster's members in a run, most typical (highest membership probability) first."""
        if page < 1 or not 1 <= page_size <= 200:
            raise ValueError("page must be >= 1 and page_size between 1 and 200")
        snap = self.snapshot()
        # the in-memory table and the lake give the same page; only the former's answers are kept
        if snap.members_ready:
            return copy.deepcopy(snap.memo(("members", cluster_key, run_id, page, page_size),
                                           lambda: self._members(snap, cluster_key, run_id, page, page_size)))
        return self._members(snap, cluster_key, run_id, page, page_size)

    def _members(self, snap: Snapshot, cluster_key: str, run_id: str, page: int, page_size: int) -> dict[str, Any]:
        offset = (page - 1) * page_size
        if snap.members_ready:
            total = snap.rows(f"SELECT count(*) AS n FROM {MEMBERS_TABLE} WHERE run_id = ? AND cluster_key = ?",
                              [run_id, cluster_key])[0]["n"]
            rows = snap.rows(f"""SELECT * FROM {MEMBERS_TABLE} WHERE run_id = ? AND cluster_key = ?
                                 ORDER BY probability DESC, transaction_id LIMIT ? OFFSET ?""",
                             [run_id, cluster_key, page_size, offset])
            members = []
            for row in rows:
                member = {k: row.pop(k) for k in ("transaction_id", "probability", "outlier_score",
                                                  "most_attended_event", "most_attended_weight")}
                for k in ("run_id", "cluster_key", "top_events"):
                    row.pop(k)
                member["transaction"] = {"transaction_id": member["transaction_id"], **row}
                members.append(member)
        else:
            total = snap.rows("SELECT count(*) AS n FROM txn_clusters WHERE run_id = ? AND cluster_key = ?",
                              [run_id, cluster_key])[0]["n"]
            members = snap.rows("""
                SELECT transaction_id, probability, outlier_score,
                       top_events[1].event_type AS most_attended_event, top_events[1].weight AS most_attended_weight
                FROM txn_clusters WHERE run_id = ? AND cluster_key = ?
                ORDER BY probability DESC, transaction_id LIMIT ? OFFSET ?""",
                                [run_id, cluster_key, page_size, offset])
            details = self._transactions(snap, members)
            for member in members:
                member["transaction"] = details.get(member["transaction_id"], {})
        return {"cluster_key": cluster_key, "run_id": run_id, "page": page, "page_size": page_size, "total": total,
                "pages": max(1, math.ceil(total / page_size)), "members": members}

    def _transactions(self, snap: Snapshot, members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The transaction rows of a page of members, in one query by id.

        (`txn_clusters.dt` cannot narrow it: the catalog reads run files with Hive partitioning, so
        that column shows the run's partition, not the transaction's day.)
        """
        if not members or "transactions" not in snap.tables:
            return {}
        ids = [m["transaction_id"] for m in members]
        rows = snap.rows(f"SELECT * FROM transactions WHERE transaction_id IN ({', '.join(['?'] * len(ids))})", ids)
        return {r["transaction_id"]: r for r in rows}

    def transaction_events(self, transaction_id: str) -> dict[str, Any] | None:
        """A transaction's click-stream (events in time order with attention weights) and its columns."""
        if not valid_transaction_id(transaction_id):
            return None
        snap = self.snapshot()
        if not snap.has_clusters:
            return None
        if snap.members_ready:
            return copy.deepcopy(snap.memo(("events", transaction_id), lambda: self._events(snap, transaction_id)))
        return self._events(snap, transaction_id)

    def _events(self, snap: Snapshot, transaction_id: str) -> dict[str, Any] | None:
        source = MEMBERS_TABLE if snap.members_ready else "txn_clusters"
        membership = snap.rows(f"""
            SELECT x.*, r.partition FROM {source} x JOIN runs r USING (run_id) WHERE x.transaction_id = ?
            ORDER BY r.committed_at DESC LIMIT 1""", [transaction_id])
        if not membership:
            return None
        member = membership[0]
        if snap.members_ready:
            skip = {"run_id", "cluster_key", "probability", "outlier_score", "most_attended_event",
                    "most_attended_weight", "top_events", "partition"}
            transaction = [{k: v for k, v in member.items() if k not in skip}]
        else:
            transaction = snap.rows("SELECT * FROM transactions WHERE transaction_id = ?",
                                    [transaction_id]) if "transactions" in snap.tables else []
        day = transaction[0].get("dt") if transaction else None
        sequence = snap.rows("""SELECT txn_ts, event_ids, event_types, log_gap_prev_s, log_time_to_txn_s, dwell_ms
                                FROM sequences WHERE (? IS NULL OR dt = CAST(? AS DATE)) AND transaction_id = ?
                                LIMIT 1""",
                             [day, day, transaction_id]) if "sequences" in snap.tables else []
        weights: dict[int, float] = {}
        for top in member.get("top_events") or []:
            if top and top.get("position") is not None and top.get("weight") is not None:
                weights[int(top["position"])] = max(float(top["weight"]), weights.get(int(top["position"]), 0.0))
        events = []
        if sequence:
            seq = sequence[0]
            txn_ts = seq["txn_ts"]
            n = len(seq["event_types"] or [])
            columns = [(seq[c] or [None] * n) for c in ("event_ids", "event_types", "log_time_to_txn_s", "dwell_ms")]
            for i, (event_id, event_type, to_txn, dwell) in enumerate(zip(*columns)):
                seconds = float(np.expm1(to_txn)) if to_txn is not None else 0.0
                events.append({"position": i, "event_id": event_id, "event_type": event_type,
                               "ts": (txn_ts.timestamp() - seconds) if isinstance(txn_ts, datetime) else None,
                               "seconds_before_transaction": round(seconds, 1), "dwell_ms": dwell,
                               "attention": weights.get(i, 0.0)})
            events.sort(key=lambda e: (-e["seconds_before_transaction"], e["position"]))
        return {"transaction_id": transaction_id, "cluster_key": member["cluster_key"], "run_id": member["run_id"],
                "partition": member["partition"], "probability": member["probability"],
                "outlier_score": member["outlier_score"], "transaction": transaction[0] if transaction else {},
                "top_events": member.get("top_events") or [], "events": events}

    def cluster_map(self, run_id: str, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """A 2-D map of a run's clusters: the first two principal components of their embedding centroids.

        Computed once per run and catalog build (about a second for a million members), then cached.
        """
        snap = snap or self.snapshot()
        cached = snap._maps.get(run_id)
        if cached is not None:
            return cached
        with snap._map_lock:
            if run_id in snap._maps:
                return snap._maps[run_id]
            snap._maps[run_id] = points = self._compute_map(snap, run_id)
            return points

    def _compute_map(self, snap: Snapshot, run_id: str) -> list[dict[str, Any]]:
        cursor = snap.cursor()
        try:
            table = cursor.execute("""SELECT cluster_key, embedding FROM txn_clusters
                                      WHERE run_id = ? AND cluster_id >= 0""", [run_id]).to_arrow_table()
            info = cursor.execute("""SELECT cluster_key, size, fraud_rate_lower, flagged, lineage_status
                                     FROM clusters_all_runs WHERE run_id = ? AND size > 0""" if
                                  "clusters_all_runs" in snap.tables else
                                  """SELECT cluster_key, size, fraud_rate_lower, flagged, lineage_status
                                     FROM clusters WHERE run_id = ? AND size > 0""", [run_id]).fetchall()
        except _READ_ERRORS as exc:
            raise LakeUnavailable(f"the lake cannot be read: {_short(exc)}") from exc
        finally:
            cursor.close()
        if table.num_rows == 0:
            return []
        keys = table.column("cluster_key").combine_chunks().dictionary_encode()
        codes = keys.indices.to_numpy(zero_copy_only=False)
        names = keys.dictionary.to_pylist()
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size if hasattr(column.type, "list_size") else len(column[0])
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float64)
        counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
        centroids = np.zeros((len(names), dim))
        np.add.at(centroids, codes, vectors)
        centroids /= np.maximum(counts, 1)[:, None]
        centred = centroids - centroids.mean(axis=0)
        if len(names) >= 2:
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            xy = centred @ vt[:2].T
            if xy.shape[1] < 2:
                xy = np.column_stack([xy, np.zeros(len(names))])
        else:
            xy = np.zeros((len(names), 2))
        about = {r[0]: r for r in info}
        points = []
        for i, key in enumerate(names):
            _, size, lower, flagged, status = about.get(key, (key, int(counts[i]), 0.0, False, None))
            points.append({"cluster_key": key, "x": round(float(xy[i, 0]), 5), "y": round(float(xy[i, 1]), 5),
                           "size": int(size), "fraud_rate_lower": float(lower or 0.0), "flagged": bool(flagged),
                           "lineage_status": status})
        return points

    # -- the one write ------------------------------------------------------------------------------

    def record(self, cluster_key: str, verdict: str, reviewer: str, comment: str = "",
               run_id: str | None = None) -> dict[str, Any]:
        """Append a verdict (infra/reviews.py: one new file, never an overwrite); returns the stored row."""
        if not valid_cluster_key(cluster_key):
            raise LookupError(f"no cluster {cluster_key!r}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        if len(comment) > MAX_COMMENT:
            raise ValueError(f"a comment has at most {MAX_COMMENT} characters")
        try:
            row = record_review(self.lake, Review(cluster_key, verdict, reviewer, comment, run_id))
        except _READ_ERRORS as exc:
            raise LakeUnavailable(f"the lake cannot be written: {_short(exc)}") from exc
        self.invalidate()
        return row


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]

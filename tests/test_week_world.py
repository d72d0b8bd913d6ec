"""The drifting week (synthetic/week.py): a separate world whose drifts daily runs are tested against.

Small worlds, no Ray: the world is read back from the lake with pyarrow.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from lakelens.infra.contracts import EVENTS, TRANSACTIONS
from lakelens.infra.storage import Lake
from lakelens.synthetic.clickstream import EVENT_TYPES
from lakelens.synthetic.generate import generate_world
from lakelens.synthetic.week import (
    BOT_GAP_S, BOT_JITTER, NEW_PATTERN_EVENT_TYPES, RELEASE_STEP, RENAMES, generate_week, measure_week_detection,
)

START = date(2026, 1, 1)
US = 1_000_000


def _day_us(day_index: int) -> int:
    return int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) * US + day_index * 86_400 * US


RELEASE_US, DAY6_US = _day_us(3), _day_us(5)


def _read(lake_root: Path, table: str) -> pa.Table:
    return ds.dataset(str(lake_root / table), format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    root = tmp_path_factory.mktemp("week") / "lake"
    summary = generate_week(Lake(root), users=600, seed=3, start=START)
    events = _read(root, "events")
    # one row per event (redeliveries collapsed)
    ids = events.column("event_id").to_numpy(zero_copy_only=False)
    _, keep = np.unique(ids, return_index=True)
    events = events.take(pa.array(np.sort(keep)))
    truth = ds.dataset(str(root / "truth/transactions"), format="parquet").to_table()
    users = ds.dataset(str(root / "truth/users"), format="parquet").to_table()
    return {"root": root, "summary": summary, "events": events, "events_raw": _read(root, "events"),
            "transactions": _read(root, "transactions"), "truth": truth, "users": users}


def _col(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64()).to_numpy()
    return column.to_numpy(zero_copy_only=False)


def _sessions(events: pa.Table, user_ids) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Purchase sessions (those with a place_order) of the given users: session_id -> (ts, types, dwell)."""
    mask = pc.and_(pc.is_in(events.column("user_id"), pa.array(sorted(user_ids))),
                   pc.is_valid(events.column("session_id")))
    rows = events.filter(mask).sort_by([("session_id", "ascending"), ("ts", "ascending")])
    sid, ts, typ = _col(rows, "session_id"), _col(rows, "ts"), _col(rows, "event_type")
    dwell = pc.fill_null(rows.column("dwell_ms"), -1).to_numpy()
    bounds = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1], True])
    out = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        if "place_order" in typ[a:b]:
            out[sid[a]] = (ts[a:b], typ[a:b], dwell[a:b])
    return out


def _users_of(week, archetype: str) -> set[str]:
    users = week["users"]
    return set(_col(users.filter(pc.equal(users.column("archetype"), archetype)), "user_id"))


# -- determinism and contracts -------------------------------------------------------------------------

def _parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_same_seed_gives_byte_identical_parquet_and_another_seed_another_world(tmp_path):
    generate_week(Lake(tmp_path / "a"), users=150, seed=5, start=START)
    generate_week(Lake(tmp_path / "b"), users=150, seed=5, start=START)
    generate_week(Lake(tmp_path / "c"), users=150, seed=6, start=START)
    a, b, c = (_parquet_bytes(tmp_path / x) for x in "abc")
    assert a and a == b
    assert a != c


@pytest.mark.slow
def test_chunks_and_worker_processes_do_not_change_the_bytes(tmp_path):
    generate_week(Lake(tmp_path / "a"), users=300, seed=5, start=START, workers=1, chunk_users=100)
    generate_week(Lake(tmp_path / "b"), users=300, seed=5, start=START, workers=2, chunk_users=100)
    assert _parquet_bytes(tmp_path / "a") == _parquet_bytes(tmp_path / "b")


def test_it_keeps_the_input_contracts_and_the_base_worlds_columns(week, tmp_path):
    raw = week["events_raw"]
    assert raw.column("user_id").null_count == 0 and raw.column("ts").null_count == 0
    assert raw.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    # a repeated event_id is the same event delivered twice: same content
    distinct = raw.select(["event_id", "user_id", "ts", "event_type"]).group_by(
        ["event_id", "user_id", "ts", "event_type"]).aggregate([])
    assert distinct.num_rows == len(set(_col(raw, "event_id")))
    txns = week["transactions"]
    assert len(set(_col(txns, "transaction_id"))) == txns.num_rows
    # the jobs' own contracts reject nothing
    assert EVENTS.validate(raw.drop(["dt"]), "events").quarantined.num_rows == 0
    assert TRANSACTIONS.validate(txns.drop(["dt"]), "transactions").quarantined.num_rows == 0
    base = Lake(tmp_path / "base")
    generate_world(base, users=30, days=2, seed=1, start=START, workers=1)
    base_txns = _read(tmp_path / "base", "transactions")
    assert txns.schema.remove(txns.schema.get_field_index("dt")) == base_txns.schema.remove(
        base_txns.schema.get_field_index("dt"))
    assert set(week["truth"].column_names) >= {"transaction_id", "is_fraud", "mo", "fraud_mo", "archetype"}
    assert week["truth"].num_rows == txns.num_rows
    assert len(set(_col(txns, "dt"))) == 7


def test_the_summary_counts_transactions_per_day_and_mo(week):
    summary = week["summary"]
    assert sum(summary["transactions_per_day"].values()) == week["transactions"].num_rows
    assert set(summary["transactions_per_day"]) == {f"2026-01-0{d}" for d in range(1, 8)}
    assert all(summary["new_pattern_per_day"][f"2026-01-0{d}"] == 0 for d in range(1, 6))


# -- drifts ---------------------------------------------------------------------------------------------

def test_the_release_renames_events_from_day_4_and_adds_a_step_to_every_purchase_flow(week):
    events = week["events"]
    ts, typ = _col(events, "ts"), _col(events, "event_type")
    for old, new in RENAMES.items():
        assert (typ == new).sum() > 0 and ts[typ == new].min() >= RELEASE_US
        assert (typ == old).sum() > 0 and ts[typ == old].max() < RELEASE_US
    assert ts[typ == RELEASE_STEP].min() >= RELEASE_US
    legit = set(_col(week["users"], "user_id"))
    sessions = _sessions(events, legit)
    after = [s for s in sessions.values() if s[0][0] >= RELEASE_US]
    before = [s for s in sessions.values() if s[0][-1] < RELEASE_US]
    assert len(after) > 300 and len(before) > 300
    assert not any(RELEASE_STEP in types for _, types, _ in before)
    with_step = [s for s in after if RELEASE_STEP in s[1]]
    # a step lost to a null session id (2 % of events) is the only way to miss it
    assert len(with_step) / len(after) > 0.95
    # just before the checkout step (place_order where the flow has none); an event lost to a null session id
    # now and then hides the step's neighbour
    right_place = 0
    for _, types, _ in with_step:
        at = list(types).index(RELEASE_STEP)
        assert list(types).count(RELEASE_STEP) == 1
        right_place += types[at + 1] == ("checkout_begin" if "checkout_begin" in types else "place_order") and (
            "checkout_begin" not in types[:at])
    assert right_place / len(with_step) > 0.95


def test_the_new_pattern_is_unseen_before_day_6_and_never_labelled(week):
    events, raw = week["events"], week["events_raw"]
    new_types = pc.is_in(raw.column("event_type"), pa.array(NEW_PATTERN_EVENT_TYPES))
    novel = raw.filter(new_types)
    assert novel.num_rows > 0
    assert _col(novel, "ts").min() >= DAY6_US
    assert min(str(d) for d in _col(novel, "dt")) >= "2026-01-06"
    assert set(_col(novel, "event_type")) == set(NEW_PATTERN_EVENT_TYPES)
    # only the pattern's accounts show these types
    users = week["users"]
    accounts = set(_col(users.filter(pc.equal(users.column("week_mo"), "new_pattern")), "user_id"))
    assert set(_col(novel, "user_id")) <= accounts
    assert not set(_col(events, "event_type")) - set(EVENT_TYPES) - {"visual_search", RELEASE_STEP,
                                                                     *RENAMES.values(), *NEW_PATTERN_EVENT_TYPES}
    truth, txns = week["truth"], week["transactions"]
    ids = _col(truth.filter(pc.equal(truth.column("mo"), "new_pattern")), "transaction_id")
    pattern = txns.filter(pc.is_in(txns.column("transaction_id"), pa.array(ids)))
    assert pattern.num_rows == len(ids) > 5
    assert pattern.column("label").null_count == pattern.num_rows
    assert _col(pattern, "ts").min() >= DAY6_US
    assert all(_col(truth.filter(pc.equal(truth.column("mo"), "new_pattern")), "is_fraud"))
    # some accounts are repurposed fraudster accounts of the base world
    assert any(a in {"card_testing", "bot_checkout", "promo_abuse"}
               for a in _col(users.filter(pc.equal(users.column("week_mo"), "new_pattern")), "archetype"))


def test_the_timing_bot_replays_quick_buyers_flows_with_near_constant_timing(week):
    events = week["events"]
    bots = _sessions(events, _users_of(week, "timing_bot"))
    humans = _sessions(events, _users_of(week, "quick_buyer"))
    assert len(bots) > 30 and len(humans) > 100

    def gaps(sessions):
        return [np.diff(ts) / US for ts, _, _ in sessions.values() if ts.size > 2]

    bot_gaps, human_gaps = np.concatenate(gaps(bots)), np.concatenate(gaps(humans))
    in_band = lambda g: np.mean(np.abs(g / BOT_GAP_S - 1) <= BOT_JITTER + 1e-6)  # noqa: E731
    # a missing event (null session id) doubles one gap now and then; every other gap is 8 s +/- 2 %
    assert in_band(bot_gaps) > 0.95
    assert in_band(human_gaps) < 0.1
    bot_cv = np.median([g.std() / g.mean() for g in gaps(bots)])
    human_cv = np.median([g.std() / g.mean() for g in gaps(humans)])
    assert bot_cv < 0.02 < 0.3 < human_cv
    # human-like medians of gap and dwell
    assert 0.6 < np.median(bot_gaps) / np.median(human_gaps) < 1.6
    bot_dwell = np.concatenate([d[d > 0] for _, _, d in bots.values()])
    human_dwell = np.concatenate([d[d > 0] for _, _, d in humans.values()])
    assert 0.6 < np.median(bot_dwell) / np.median(human_dwell) < 1.6
    assert np.percentile(bot_dwell, 95) / np.percentile(bot_dwell, 5) < 1.05
    # the same event types as quick buyers (apart from the noise events every flow has)
    bot_types = {t for _, types, _ in bots.values() for t in types}
    human_types = {t for _, types, _ in humans.values() for t in types}
    assert bot_types <= human_types | {"view_account", "notification_click", "view_category", "home"}
    # fraud, labelled partially and late, every day
    truth, txns = week["truth"], week["transactions"]
    ids = _col(truth.filter(pc.equal(truth.column("mo"), "timing_bot")), "transaction_id")
    bot_txns = txns.filter(pc.is_in(txns.column("transaction_id"), pa.array(ids)))
    assert len(set(_col(bot_txns, "dt"))) == 7
    labelled = bot_txns.column("label").is_valid().to_numpy(zero_copy_only=False)
    assert 0.1 < labelled.mean() < 0.6


def test_the_sale_raises_deal_steps_and_purchases_on_days_6_and_7(week):
    events, truth = week["events"], week["truth"]
    legit = set()
    for archetype in ("browser", "quick_buyer", "deal_hunter", "mobile_loyal", "gift_shopper"):
        legit |= _users_of(week, archetype)
    mine = events.filter(pc.is_in(events.column("user_id"), pa.array(sorted(legit))))
    ts, typ = _col(mine, "ts"), _col(mine, "event_type")
    day = (ts - _day_us(0)) // (86_400 * US)
    share = {d: np.mean(typ[day == d] == "view_deals") for d in range(7)}
    promo = {d: np.mean(typ[day == d] == "apply_promo") for d in range(7)}
    assert min(share[5], share[6]) > 1.15 * max(share[d] for d in range(5))
    assert min(promo[5], promo[6]) > 2 * max(promo[d] for d in range(5))
    # in purchase flows: many more open with or pass through view_deals
    flows = _sessions(events, legit)
    with_deals = {d: [] for d in range(7)}
    for ts_, types, _ in flows.values():
        with_deals[int((ts_[-1] - _day_us(0)) // (86_400 * US))].append("view_deals" in types)
    before = max(np.mean(with_deals[d]) for d in range(5))
    assert min(np.mean(with_deals[5]), np.mean(with_deals[6])) > before + 0.3
    per_day = {}
    legit_truth = truth.filter(pc.equal(truth.column("fraud_mo"), "none"))
    for d in (_col(legit_truth, "ts") - _day_us(0)) // (86_400 * US):
        per_day[d] = per_day.get(d, 0) + 1
    # about 40 % more legitimate purchases
    assert (per_day[5] + per_day[6]) / 2 > 1.25 * np.mean([per_day[d] for d in range(5)])


# -- scoring ---------------------------------------------------------------------------------------------

def test_measure_week_detection_reports_recall_precision_per_mo_and_the_new_pattern(week, tmp_path):
    lake = Lake(week["root"])
    root = week["root"]
    window = sorted(str(p.relative_to(root)) for p in root.glob("transactions/dt=2026-01-0[67]/*.parquet"))
    txns = ds.dataset([str(root / w) for w in window], format="parquet").to_table()
    truth = week["truth"]
    mo_of = dict(zip(_col(truth, "transaction_id"), _col(truth, "mo")))
    ids = _col(txns, "transaction_id")
    mos = np.array([mo_of[i] for i in ids], dtype=object)
    # a made-up run: the new pattern plus five quick buyers in one flagged new cluster, the bot in a stable one
    key = np.full(ids.size, None, dtype=object)
    key[mos == "new_pattern"] = "ck-new"
    key[np.flatnonzero(mos == "quick_buyer")[:5]] = "ck-new"
    key[mos == "timing_bot"] = "ck-bot"
    key[np.flatnonzero(mos == "browser")[:40]] = "ck-browse"
    run = "runs/behavior-clusters/dt=2026-01-07/r1/a1/tables"
    lake.write_table(f"{run}/txn_clusters/part-0.parquet", pa.table({
        "transaction_id": pa.array(ids, pa.string()), "cluster_key": pa.array(key, pa.string())}))
    n_new = int((mos == "new_pattern").sum())
    lake.write_table(f"{run}/clusters/part-0.parquet", pa.table({
        "cluster_key": ["ck-new", "ck-bot", "ck-browse"], "size": [n_new + 5, int((mos == "timing_bot").sum()), 40],
        "flagged": [True, False, False], "lineage_status": ["new", "stable", "growing"],
        "emerging": [True, False, False]}))
    manifest = {"run_id": "r1", "partition": "dt=2026-01-07",
                "inputs": [{"table": "transactions", "path": w} for w in window],
                "outputs": {t: {"files": [{"path": f"{run}/{t}/part-0.parquet"}]} for t in ("txn_clusters", "clusters")}}
    result = measure_week_detection(lake, manifest)
    new = result["new_pattern"]
    assert new["transactions"] == n_new > 0 and new["noise"] == 0
    assert new["clusters"] == {"ck-new": n_new}
    assert new["dominant_cluster"] == "ck-new" and new["dominant_share"] == 1.0
    assert new["dominant_purity"] == pytest.approx(n_new / (n_new + 5))
    assert new["dominant_lineage_status"] == "new" and new["dominant_flagged"] is True
    assert result["timing_bot"]["dominant_cluster"] == "ck-bot" and result["timing_bot"]["dominant_flagged"] is False
    per_mo = result["per_mo"]
    assert per_mo["new_pattern"]["recall"] == 1.0 and per_mo["new_pattern"]["flagged"] == n_new
    assert per_mo["new_pattern"]["precision"] == pytest.approx(n_new / (n_new + 5))
    assert per_mo["timing_bot"]["recall"] == 0.0 and per_mo["quick_buyer"]["recall"] is None
    assert per_mo["quick_buyer"]["flagged"] == 5
    overall = result["overall"]
    assert overall["flagged_members"] == n_new + 5 and overall["flagged_clusters"] == 1
    assert overall["precision"] == pytest.approx(n_new / (n_new + 5))
    unlabelled = sum(v["unlabelled_fraud"] for v in per_mo.values())
    assert overall["unlabelled_fraud"] == unlabelled and overall["recall"] == pytest.approx(n_new / unlabelled)


@pytest.mark.slow
def test_generate_week_command(tmp_path):
    lakelens = str(Path(sys.executable).parent / "lakelens")
    help_text = subprocess.run([lakelens, "generate-week", "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "--users" in help_text.stdout and "--seed" in help_text.stdout
    done = subprocess.run([lakelens, "generate-week", "--out", str(tmp_path / "lake"), "--users", "60", "--seed", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "generate-week:" in done.stdout
    assert (tmp_path / "lake" / "truth" / "_world.json").exists()

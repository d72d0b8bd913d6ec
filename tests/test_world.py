"""The synthetic world: reproducible, realistic in shape, with planted and partially labelled fraud."""

from datetime import date

import pyarrow.compute as pc

from lakelens.infra.storage import Lake
from lakelens.synthetic.clickstream import EVENT_TYPES, FRAUD_MOS, LATE_EVENT_TYPE, WorldParams, generate_chunk, DAY_US
from lakelens.synthetic.generate import EPOCH, generate_world


def _params(seed=1, days=3):
    return WorldParams(seed=seed, start_day_us=(date(2026, 1, 1) - EPOCH).days * DAY_US, days=days)


def test_the_same_seed_gives_the_same_lake_and_another_seed_does_not(tmp_path):
    a, b, c = (Lake(tmp_path / n) for n in "abc")
    generate_world(a, users=300, days=2, seed=9, workers=1)
    generate_world(b, users=300, days=2, seed=9, workers=2, chunk_users=20_000)
    generate_world(c, users=300, days=2, seed=10, workers=1)
    files = [e.path for e in a.list_files("", suffix=".parquet")]
    assert files == [e.path for e in b.list_files("", suffix=".parquet")]
    assert all(a.read_bytes(f) == b.read_bytes(f) for f in files)
    assert any(a.read_bytes(f) != c.read_bytes(f) for f in files if c.exists(f))


def test_world_has_about_forty_event_types_sessions_dwell_and_a_late_new_type():
    world = generate_chunk(_params(), chunk=0, n_users=3000)
    events = world["events"]
    types = set(events.column("event_type").to_pylist())
    assert len(EVENT_TYPES) >= 40 and len(types) >= 38
    assert LATE_EVENT_TYPE in types
    first_day_end = _params().start_day_us + DAY_US
    early = events.filter(pc.less(pc.cast(events.column("ts"), "int64"), first_day_end))
    assert LATE_EVENT_TYPE not in set(early.column("event_type").to_pylist())
    assert 0 < events.column("dwell_ms").null_count < events.num_rows * 0.3
    assert events.column("session_id").null_count > 0


def test_every_fraud_modus_operandi_is_planted_and_labels_are_partial_and_later_days_have_fewer():
    world = generate_chunk(_params(days=4), chunk=0, n_users=8000)
    truth = world["truth_transactions"]
    assert set(FRAUD_MOS) <= set(truth.column("fraud_mo").to_pylist())
    txns = world["transactions"]
    fraud = truth.column("is_fraud")
    labels = txns.column("label")
    fraud_labels = labels.filter(fraud)
    assert 0 < fraud_labels.null_count < len(fraud_labels)  # only some fraud is charged back
    assert labels.null_count > 0.8 * len(labels)  # most rows are unknown
    assert pc.all(pc.equal(labels.filter(pc.equal(labels, 1)), 1)).as_py()
    day = pc.divide(pc.cast(txns.column("ts"), "int64"), DAY_US)
    first, last = pc.min(day).as_py(), pc.max(day).as_py()

    def charged_back_share(d):
        mask = pc.and_(fraud, pc.equal(day, d))
        return pc.sum(pc.is_valid(labels.filter(mask))).as_py() / max(1, pc.sum(mask).as_py())

    assert charged_back_share(first) > charged_back_share(last)


def test_takeover_sequences_contain_credential_changes_and_bots_are_fast():
    world = generate_chunk(_params(), chunk=0, n_users=6000)
    events = world["events"]
    truth = world["truth_transactions"].to_pylist()
    victims = {r["user_id"] for r in truth if r["fraud_mo"] == "account_takeover"}
    victim_types = set(events.filter(pc.is_in(events.column("user_id"), value_set=__import__("pyarrow").array(list(victims)))).column("event_type").to_pylist())
    assert {"password_reset_request", "change_email", "change_address"} & victim_types
    bots = {r["user_id"] for r in truth if r["fraud_mo"] == "bot_checkout"}
    legit = {r["user_id"] for r in truth if r["fraud_mo"] == "none"}

    def median_dwell(users):
        import pyarrow as pa

        sub = events.filter(pc.is_in(events.column("user_id"), value_set=pa.array(list(users))))
        return pc.approximate_median(sub.column("dwell_ms")).as_py()

    assert median_dwell(bots) * 5 < median_dwell(legit)


def test_expert_features_are_present_and_fraudster_accounts_are_young():
    world = generate_chunk(_params(), chunk=0, n_users=6000)
    txns = world["transactions"].to_pylist()
    mo = {r["transaction_id"]: r["fraud_mo"] for r in world["truth_transactions"].to_pylist()}
    for name in ("account_age_days", "txn_velocity_24h", "amount_to_user_avg", "is_new_device",
                 "ip_country_mismatch", "payment_method", "hour_of_day"):
        assert name in txns[0]
    card_testing = [r for r in txns if mo[r["transaction_id"]] == "card_testing"]
    assert max(r["account_age_days"] for r in card_testing) < 20
    assert sum(r["txn_velocity_24h"] for r in card_testing) / len(card_testing) > 2

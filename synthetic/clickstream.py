"""A synthetic click-stream world with planted fraud.

Users follow one of several legitimate behaviour archetypes. A few accounts are run by
fraudsters (card testing, bot checkout, promo abuse) and some legitimate accounts are taken
over. Each behaviour is a Markov chain over ~40 event types with its own pacing; a purchase
session always ends in `place_order`, seconds before the transaction it leads to.

Everything is vectorised per chunk of users and seeded by (seed, chunk), so the same seed
gives the same lake whatever the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENT_TYPES: tuple[str, ...] = (
    "app_open", "home", "search", "view_category", "view_item", "read_reviews", "compare_items",
    "view_deals", "add_to_wishlist", "view_wishlist", "add_to_cart", "remove_from_cart", "view_cart",
    "checkout_start", "enter_shipping", "enter_payment", "apply_promo", "promo_invalid",
    "redeem_gift_card", "place_order", "payment_failed", "view_order_history", "track_order",
    "request_refund", "contact_support", "chat_support", "login", "login_failed", "logout",
    "password_reset_request", "password_reset_complete", "change_password", "change_email",
    "change_address", "change_phone", "add_card", "remove_card", "verify_2fa", "view_account",
    "notification_click", "gift_card_balance", "write_review",
)
# A type the early days never show: downstream code must cope with unseen types.
LATE_EVENT_TYPE = "visual_search"

EV = {name: i for i, name in enumerate(EVENT_TYPES)}
K = len(EVENT_TYPES)
END = K  # column index for "session ends"; row index K is the start distribution
NOISE_EVENTS = ("home", "search", "view_item", "view_category", "view_cart", "view_account", "notification_click")

LEGIT_ARCHETYPES = ("browser", "quick_buyer", "deal_hunter", "mobile_loyal", "gift_shopper")
FRAUD_MOS = ("account_takeover", "card_testing", "bot_checkout", "promo_abuse")
# account takeover happens to legitimate users; the others are fraudster-owned accounts
FRAUDSTER_MOS = ("card_testing", "bot_checkout", "promo_abuse")

CHECKOUT = {
    "view_item": {"add_to_cart": 2, "view_item": 1, "read_reviews": 0.5},
    "add_to_cart": {"view_cart": 2, "checkout_start": 1, "view_item": 0.5},
    "view_cart": {"checkout_start": 3, "remove_from_cart": 0.3},
    "remove_from_cart": {"view_item": 1, "view_cart": 1},
    "checkout_start": {"enter_shipping": 2, "enter_payment": 1},
    "enter_shipping": {"enter_payment": 1},
    "enter_payment": {"place_order": 4, "apply_promo": 0.3},
    "apply_promo": {"enter_payment": 1},
}


@dataclass(frozen=True)
class Behaviour:
    """A Markov chain over event types plus its pacing."""

    start: dict[str, float]
    moves: dict[str, dict[str, float]]
    gap_median_s: float
    gap_sigma: float
    purchase: bool
    noise: float = 0.03


def _browse(start, moves, gap, sigma=0.8) -> Behaviour:
    return Behaviour(start, moves, gap, sigma, purchase=False)


def _purchase(start, moves, gap, sigma=0.8, noise=0.03) -> Behaviour:
    merged = {k: dict(v) for k, v in CHECKOUT.items()}
    for k, v in moves.items():
        merged[k] = {**merged.get(k, {}), **v}
    return Behaviour(start, merged, gap, sigma, purchase=True, noise=noise)


BROWSE_MOVES = {
    "home": {"view_category": 3, "search": 2, "view_deals": 1, "end": 0.3},
    "app_open": {"home": 2, "notification_click": 1, "search": 1},
    "search": {"view_item": 4, "search": 1, "end": 0.3},
    "view_category": {"view_item": 4, "view_category": 1, "end": 0.3},
    "view_item": {"view_item": 2, "read_reviews": 1.5, "add_to_wishlist": 0.6, "compare_items": 0.6,
                  "view_category": 1, "end": 1},
    "read_reviews": {"view_item": 2, "write_review": 0.1, "end": 0.6},
    "add_to_wishlist": {"view_wishlist": 1, "view_item": 1, "end": 0.5},
    "view_wishlist": {"view_item": 1, "end": 1},
    "compare_items": {"view_item": 2, "compare_items": 0.5},
    "view_deals": {"view_item": 2, "view_deals": 1, "compare_items": 1, "end": 0.5},
    "notification_click": {"view_item": 2, "view_order_history": 1, "track_order": 1},
    "view_order_history": {"track_order": 2, "view_item": 1, "end": 1},
    "track_order": {"end": 2, "view_order_history": 0.5},
    "gift_card_balance": {"view_category": 1, "end": 1},
    "request_refund": {"contact_support": 1, "chat_support": 1, "end": 0.5},
    "contact_support": {"chat_support": 1, "end": 1},
    "chat_support": {"end": 2, "request_refund": 0.5},
}

BEHAVIOURS: dict[str, Behaviour] = {
    # legitimate background browsing
    "browse/browser": _browse({"home": 3, "app_open": 1, "search": 2}, BROWSE_MOVES, 25),
    "browse/quick_buyer": _browse({"search": 3, "home": 1}, {**BROWSE_MOVES, "view_item": {"end": 3, "view_item": 1}}, 12),
    "browse/deal_hunter": _browse({"view_deals": 3, "home": 1}, {**BROWSE_MOVES, "view_deals": {"view_item": 2, "compare_items": 2, "view_deals": 1, "end": 0.5}}, 18),
    "browse/mobile_loyal": _browse({"app_open": 3, "notification_click": 2}, BROWSE_MOVES, 15),
    "browse/gift_shopper": _browse({"home": 1, "gift_card_balance": 2}, {**BROWSE_MOVES, "gift_card_balance": {"view_category": 2, "end": 0.5}}, 22),
    # fraudster-owned accounts between attacks
    "browse/card_testing": _browse({"view_account": 1, "add_card": 1}, {"view_account": {"add_card": 1, "end": 1}, "add_card": {"remove_card": 1, "end": 1}, "remove_card": {"end": 1}}, 4, 0.5),
    "browse/bot_checkout": _browse({"view_item": 1}, {"view_item": {"view_item": 2, "end": 1}}, 0.7, 0.25),
    "browse/promo_abuse": _browse({"view_order_history": 1, "contact_support": 1}, {**BROWSE_MOVES, "view_order_history": {"request_refund": 3, "end": 0.3}}, 10),
    # legitimate purchases
    "buy/browser": _purchase({"home": 2, "search": 2}, {**BROWSE_MOVES, "view_item": {"add_to_cart": 1.2, "view_item": 1.5, "read_reviews": 1.5, "compare_items": 0.5}}, 25),
    "buy/quick_buyer": _purchase({"search": 3}, {"search": {"view_item": 1}}, 8),
    "buy/deal_hunter": _purchase({"view_deals": 3}, {"view_deals": {"view_item": 2, "compare_items": 1}, "compare_items": {"view_item": 1}, "checkout_start": {"apply_promo": 1.5, "enter_shipping": 1}}, 15),
    "buy/mobile_loyal": _purchase({"app_open": 2, "notification_click": 2}, {"app_open": {"view_order_history": 1, "view_item": 1}, "notification_click": {"view_item": 2}, "view_order_history": {"view_item": 1}}, 10),
    "buy/gift_shopper": _purchase({"gift_card_balance": 1, "view_category": 2}, {"gift_card_balance": {"view_category": 1}, "view_category": {"view_item": 2}, "enter_payment": {"redeem_gift_card": 1, "place_order": 2}, "redeem_gift_card": {"place_order": 1}}, 20),
    # fraud modus operandi
    "buy/account_takeover": _purchase(
        {"login_failed": 3, "password_reset_request": 1},
        {"login_failed": {"login_failed": 1.2, "password_reset_request": 1},
         "password_reset_request": {"password_reset_complete": 1},
         "password_reset_complete": {"login": 1},
         "login": {"change_email": 1, "change_address": 1, "change_password": 0.6},
         "change_password": {"change_email": 1, "change_address": 1},
         "change_email": {"change_address": 1.5, "add_card": 1},
         "change_address": {"add_card": 2, "change_phone": 0.4},
         "change_phone": {"add_card": 1},
         "add_card": {"view_item": 1, "checkout_start": 1},
         "view_item": {"add_to_cart": 3}}, 6, 0.6, noise=0.02),
    "buy/card_testing": _purchase(
        {"add_card": 3, "view_item": 1},
        {"add_card": {"enter_payment": 2, "checkout_start": 1},
         "view_item": {"add_to_cart": 1}, "add_to_cart": {"checkout_start": 1},
         "enter_payment": {"payment_failed": 2, "place_order": 1.5},
         "payment_failed": {"add_card": 1.5, "enter_payment": 1, "remove_card": 0.5},
         "remove_card": {"add_card": 1}}, 3, 0.5, noise=0.02),
    "buy/bot_checkout": _purchase(
        {"view_item": 1},
        {"view_item": {"add_to_cart": 1}, "add_to_cart": {"checkout_start": 1},
         "checkout_start": {"enter_shipping": 1}, "enter_shipping": {"enter_payment": 1},
         "enter_payment": {"place_order": 1}}, 0.6, 0.2, noise=0.01),
    "buy/promo_abuse": _purchase(
        {"view_deals": 2, "app_open": 1},
        {"view_deals": {"view_item": 1, "apply_promo": 0.6}, "app_open": {"view_deals": 1},
         "add_to_cart": {"apply_promo": 2, "checkout_start": 0.5},
         "apply_promo": {"promo_invalid": 1.2, "apply_promo": 0.6, "checkout_start": 0.8},
         "promo_invalid": {"apply_promo": 1.5, "checkout_start": 0.3},
         "checkout_start": {"redeem_gift_card": 2, "enter_payment": 0.5},
         "redeem_gift_card": {"apply_promo": 0.4, "enter_payment": 1}}, 8, 0.6),
}
BEHAVIOUR_NAMES = tuple(BEHAVIOURS)
BEHAVIOUR_ID = {name: i for i, name in enumerate(BEHAVIOUR_NAMES)}


@dataclass(frozen=True)
class Profile:
    """Per-archetype rates and expert-feature tendencies."""

    share: float
    browse_per_day: float
    txns_per_day: float
    amount_log_mean: float
    declined: float
    new_device: float
    country_mismatch: float
    payment: tuple[float, float, float]  # card, wallet, gift_card
    account_age_days: tuple[float, float]  # log-uniform range


PROFILES: dict[str, Profile] = {
    "browser": Profile(0.30, 1.6, 0.30, np.log(60), 0.03, 0.08, 0.03, (0.7, 0.25, 0.05), (60, 2500)),
    "quick_buyer": Profile(0.25, 0.8, 0.45, np.log(40), 0.03, 0.08, 0.03, (0.6, 0.38, 0.02), (60, 2500)),
    "deal_hunter": Profile(0.20, 1.5, 0.35, np.log(30), 0.03, 0.08, 0.03, (0.7, 0.2, 0.1), (60, 2500)),
    "mobile_loyal": Profile(0.15, 2.0, 0.40, np.log(35), 0.02, 0.05, 0.02, (0.4, 0.58, 0.02), (200, 3000)),
    "gift_shopper": Profile(0.10, 1.0, 0.25, np.log(50), 0.03, 0.08, 0.03, (0.5, 0.1, 0.4), (60, 2500)),
    "card_testing": Profile(0.0, 0.5, 7.0, 0.0, 0.70, 0.50, 0.40, (1.0, 0.0, 0.0), (0.2, 15)),
    "bot_checkout": Profile(0.0, 0.6, 3.0, np.log(220), 0.05, 0.15, 0.05, (0.6, 0.4, 0.0), (20, 600)),
    "promo_abuse": Profile(0.0, 1.2, 1.5, np.log(35), 0.05, 0.55, 0.10, (0.3, 0.1, 0.6), (0.5, 25)),
}
ATO = Profile(0.0, 0.0, 0.0, np.log(3.0), 0.15, 0.70, 0.35, (0.9, 0.1, 0.0), (0, 0))
PAYMENT_METHODS = np.array(["card", "wallet", "gift_card"])

DAY_US = 86_400 * 1_000_000
SECOND_US = 1_000_000
MAX_SESSION = 40


@dataclass(frozen=True)
class WorldParams:
    seed: int
    start_day_us: int  # midnight UTC of the first transaction day, in microseconds
    days: int
    fraudster_share: float = 0.02
    takeover_share: float = 0.015
    chunk_users: int = 20_000


def _transition_cdfs() -> np.ndarray:
    """Cumulative transition rows, shape (behaviours, K+1 states incl. START, K+1 targets incl. END)."""
    noise = np.zeros(K + 1)
    noise[[EV[e] for e in NOISE_EVENTS]] = 1.0
    noise /= noise.sum()
    out = np.zeros((len(BEHAVIOURS), K + 1, K + 1))
    for b, beh in enumerate(BEHAVIOURS.values()):
        for state in range(K + 1):
            row = np.zeros(K + 1)
            spec = beh.start if state == K else beh.moves.get(EVENT_TYPES[state])
            if spec is None:
                spec = {"view_item": 1, "add_to_cart": 1} if beh.purchase else {"home": 1, "view_item": 1, "end": 2}
            for target, weight in spec.items():
                row[END if target == "end" else EV[target]] += weight
            if beh.purchase:
                row[END] = 0.0  # a purchase session only ends at place_order
            row /= row.sum()
            if state != K:
                row = (1 - beh.noise) * row + beh.noise * noise
            if beh.purchase and state == EV["place_order"]:
                row[:] = 0.0
                row[END] = 1.0
            out[b, state] = np.cumsum(row)
    out[:, :, -1] = 1.0
    return out


_CDFS = _transition_cdfs()
# Rows laid end to end, each shifted by its index, so one searchsorted samples every session.
_FLAT = (_CDFS.reshape(-1, K + 1) + np.arange(len(BEHAVIOURS) * (K + 1))[:, None]).reshape(-1)


def sample_sessions(behaviour_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Event-type matrix (sessions, MAX_SESSION), -1 padded."""
    n = len(behaviour_ids)
    out = np.full((n, MAX_SESSION), -1, dtype=np.int16)
    state = np.full(n, K, dtype=np.int64)
    alive = np.arange(n)
    for step in range(MAX_SESSION):
        if alive.size == 0:
            break
        row = behaviour_ids[alive].astype(np.int64) * (K + 1) + state[alive]
        nxt = np.searchsorted(_FLAT, row + rng.random(alive.size), side="right") - row * (K + 1)
        nxt = np.minimum(nxt, K)
        keep = nxt != END
        out[alive[keep], step] = nxt[keep]
        state[alive[keep]] = nxt[keep]
        alive = alive[keep]
    purchase = np.array([BEHAVIOURS[BEHAVIOUR_NAMES[b]].purchase for b in range(len(BEHAVIOURS))])[behaviour_ids]
    unfinished = purchase & (out[:, -1] >= 0) & (out[:, -1] != EV["place_order"])
    out[unfinished, -1] = EV["place_order"]
    return out


def _diurnal_offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Time of day in microseconds, busier in the evening."""
    hours = np.arange(24)
    weight = 0.3 + np.exp(-0.5 * ((hours - 20) / 3.5) ** 2) + 0.5 * np.exp(-0.5 * ((hours - 12) / 2.5) ** 2)
    hour = rng.choice(24, size=n, p=weight / weight.sum())
    return ((hour + rng.random(n)) * 3600 * SECOND_US).astype(np.int64)


def generate_chunk(params: WorldParams, chunk: int, n_users: int) -> dict[str, pa.Table]:
    """Users [chunk*chunk_users, +n_users): their events, transactions and the ground truth."""
    rng = np.random.default_rng([params.seed, chunk])
    first_user = chunk * params.chunk_users

    # -- who is who --
    legit_shares = np.array([PROFILES[a].share for a in LEGIT_ARCHETYPES])
    archetype = rng.choice(len(LEGIT_ARCHETYPES), size=n_users, p=legit_shares / legit_shares.sum())
    archetype_name = np.array(LEGIT_ARCHETYPES, dtype=object)[archetype]
    fraudster = rng.random(n_users) < params.fraudster_share
    archetype_name[fraudster] = np.array(FRAUDSTER_MOS, dtype=object)[rng.integers(0, 3, fraudster.sum())]
    victim = ~fraudster & (rng.random(n_users) < params.takeover_share)
    profile = [PROFILES[a] for a in archetype_name]
    lo, hi = np.array([p.account_age_days for p in profile]).T
    account_age0 = np.exp(rng.uniform(np.log(lo), np.log(hi)))  # age at day 0, days
    amount_base = np.exp(np.array([p.amount_log_mean for p in profile]) + rng.normal(0, 0.4, n_users))
    # fraudster accounts attack on one or two days; others are active every day
    active_day = np.ones((n_users, params.days), dtype=bool)
    attack_day = rng.integers(0, params.days, n_users)
    for u in np.flatnonzero(fraudster):
        active_day[u] = False
        active_day[u, attack_day[u]] = True
        if rng.random() < 0.4:
            active_day[u, rng.integers(0, params.days)] = True

    # -- transactions --
    rates = np.array([p.txns_per_day for p in profile])[:, None] * active_day
    counts = rng.poisson(rates)
    t_user = np.repeat(np.repeat(np.arange(n_users), params.days), counts.reshape(-1))
    t_day = np.repeat(np.tile(np.arange(params.days), n_users), counts.reshape(-1))
    t_ts = params.start_day_us + t_day * DAY_US + _diurnal_offsets(rng, len(t_user))
    # card testers fire bursts: each tester's attempts that day land minutes apart
    burst = np.flatnonzero((archetype_name == "card_testing")[t_user])
    if burst.size:
        groups, group_of = np.unique(t_user[burst] * params.days + t_day[burst], return_inverse=True)
        anchor = params.start_day_us + (groups % params.days) * DAY_US
        anchor += rng.integers(6 * 3600, 22 * 3600, groups.size) * SECOND_US
        t_ts[burst] = anchor[group_of] + _rank_within_group(group_of) * rng.integers(20, 300, burst.size) * SECOND_US
    t_mo = np.array(["none"] * len(t_user), dtype=object)
    t_mo[fraudster[t_user]] = archetype_name[t_user[fraudster[t_user]]]

    # account takeover: one or two fraudulent purchases on a victim's account
    v_users = np.flatnonzero(victim)
    n_ato = 1 + (rng.random(v_users.size) < 0.4)
    a_user = np.repeat(v_users, n_ato)
    a_day = rng.integers(0, params.days, a_user.size)
    a_ts = params.start_day_us + a_day * DAY_US + _diurnal_offsets(rng, a_user.size)
    t_user = np.concatenate([t_user, a_user])
    t_ts = np.concatenate([t_ts, a_ts])
    t_mo = np.concatenate([t_mo, np.array(["account_takeover"] * a_user.size, dtype=object)])
    order = np.lexsort((t_ts, t_user))
    t_user, t_ts, t_mo = t_user[order], t_ts[order], t_mo[order]
    n_txn = t_user.size
    is_fraud = t_mo != "none"
    txn_profile = [ATO if m == "account_takeover" else profile[u] for u, m in zip(t_user, t_mo)]

    # -- expert features, from each user's own history --
    velocity = _count_prior(t_user, t_ts, 24 * 3600 * SECOND_US)
    amount_factor = np.exp(np.array([p.amount_log_mean for p in txn_profile]))
    amount = np.where(
        t_mo == "account_takeover",
        amount_base[t_user] * amount_factor * np.exp(rng.normal(0, 0.3, n_txn)),
        np.where(t_mo == "card_testing", rng.uniform(0.5, 5.0, n_txn), amount_base[t_user] * np.exp(rng.normal(0, 0.5, n_txn))),
    ).round(2)
    declined = rng.random(n_txn) < np.array([p.declined for p in txn_profile])
    new_device = rng.random(n_txn) < np.array([p.new_device for p in txn_profile])
    mismatch = rng.random(n_txn) < np.array([p.country_mismatch for p in txn_profile])
    pay_p = np.array([p.payment for p in txn_profile])
    payment = PAYMENT_METHODS[(rng.random(n_txn)[:, None] > np.cumsum(pay_p, axis=1)).sum(1).clip(0, 2)]
    age_days = account_age0[t_user] + (t_ts - params.start_day_us) / DAY_US
    # chargebacks arrive late: the newer the day, the fewer fraud labels exist yet
    day_of = (t_ts - params.start_day_us) // DAY_US
    days_left = params.days - 1 - day_of
    p_chargeback = np.where(days_left >= 2, 0.45, np.where(days_left == 1, 0.3, 0.12))
    label = np.full(n_txn, -1, dtype=np.int8)
    label[is_fraud & (rng.random(n_txn) < p_chargeback)] = 1
    label[~is_fraud & (rng.random(n_txn) < 0.08)] = 0

    txn_ids = _ids("t", chunk, n_txn)
    user_ids = _ids("u", 0, n_users, offset=first_user)
    transactions = pa.table(
        {
            "transaction_id": txn_ids,
            "user_id": user_ids.take(pa.array(t_user)),
            "ts": pa.array(t_ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
            "currency": pa.array(np.where(mismatch & (rng.random(n_txn) < 0.5), "GBP", "EUR")),
            "status": pa.array(np.where(declined, "declined", "approved")),
            "label": pa.array(np.where(label < 0, 0, label), pa.int8(), mask=label < 0),
            "account_age_days": pa.array(age_days.round(2), pa.float64()),
            "txn_velocity_24h": pa.array(velocity, pa.int64()),
            "amount_to_user_avg": pa.array((amount / amount_base[t_user]).round(3), pa.float64()),
            "is_new_device": pa.array(new_device),
            "ip_country_mismatch": pa.array(mismatch),
            "payment_method": pa.array(payment),
            "hour_of_day": pa.array(((t_ts % DAY_US) // (3600 * SECOND_US)).astype(np.int64)),
        }
    )
    truth = pa.table(
        {
            "transaction_id": txn_ids,
            "user_id": transactions.column("user_id"),
            "ts": transactions.column("ts"),
            "is_fraud": pa.array(is_fraud),
            "fraud_mo": pa.array(t_mo.astype(str)),
            "archetype": pa.array(archetype_name[t_user].astype(str)),
        }
    )

    # -- sessions: one purchase session before each transaction, plus background browsing --
    user_buy = np.array([BEHAVIOUR_ID[f"buy/{a}"] for a in archetype_name], dtype=np.int64)
    user_browse = np.array([BEHAVIOUR_ID[f"browse/{a}"] for a in archetype_name], dtype=np.int64)
    buy_behaviour = np.where(t_mo == "account_takeover", BEHAVIOUR_ID["buy/account_takeover"], user_buy[t_user])
    buy_end = t_ts - rng.integers(2, 40, n_txn) * SECOND_US
    days_incl_warmup = params.days + 1  # day -1 gives the first day's lookback
    b_rates = np.array([p.browse_per_day for p in profile])[:, None] * np.concatenate(
        [np.ones((n_users, 1), bool), active_day | ~fraudster[:, None]], axis=1
    )
    b_counts = rng.poisson(b_rates)
    bg_user = np.repeat(np.repeat(np.arange(n_users), days_incl_warmup), b_counts.reshape(-1))
    bg_day = np.repeat(np.tile(np.arange(-1, params.days), n_users), b_counts.reshape(-1))
    bg_start = params.start_day_us + bg_day * DAY_US + _diurnal_offsets(rng, bg_user.size)
    bg_behaviour = user_browse[bg_user]

    s_user = np.concatenate([t_user, bg_user])
    s_behaviour = np.concatenate([buy_behaviour, bg_behaviour])
    steps = sample_sessions(s_behaviour, rng)
    lengths = (steps >= 0).sum(1)
    gap_median = np.array([BEHAVIOURS[n].gap_median_s for n in BEHAVIOUR_NAMES])[s_behaviour]
    gap_sigma = np.array([BEHAVIOURS[n].gap_sigma for n in BEHAVIOUR_NAMES])[s_behaviour]
    gaps = np.exp(np.log(gap_median)[:, None] + gap_sigma[:, None] * rng.standard_normal(steps.shape))
    gaps_us = (gaps * SECOND_US).astype(np.int64)
    gaps_us[steps < 0] = 0
    offsets = np.cumsum(gaps_us, axis=1) - gaps_us  # first event at offset 0
    duration = offsets[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    s_start = np.concatenate([buy_end[:] - duration[:n_txn], bg_start])

    valid = steps >= 0
    e_session = np.repeat(np.arange(len(s_user)), lengths)
    e_type = steps[valid].astype(np.int64)
    e_ts = (s_start[:, None] + offsets)[valid]
    next_gap = np.concatenate([gaps_us[:, 1:], np.zeros((len(s_user), 1), np.int64)], axis=1)[valid]
    dwell = (next_gap / 1000 * rng.uniform(0.4, 0.95, e_type.size)).astype(np.int64)
    is_last = np.concatenate([np.diff(e_session) != 0, [True]]) if e_session.size else np.zeros(0, bool)
    dwell_null = (rng.random(e_type.size) < 0.06) | (is_last & (rng.random(e_type.size) < 0.6))
    e_user = s_user[e_session]

    type_names = np.array(EVENT_TYPES + (LATE_EVENT_TYPE,), dtype=object)
    late_days = e_ts >= params.start_day_us + (params.days // 2) * DAY_US
    e_type[(e_type == EV["search"]) & late_days & (rng.random(e_type.size) < 0.15)] = K  # visual_search

    # arrival: mostly seconds late, sometimes hours (so events cross into the next day's partition)
    delay = np.where(rng.random(e_type.size) < 0.02, rng.integers(1, 20, e_type.size) * 3600, rng.exponential(30, e_type.size))
    arrival = e_ts + (delay * SECOND_US).astype(np.int64)
    # redelivery: a few events arrive twice
    dup = rng.random(e_type.size) < 0.003
    idx = np.concatenate([np.arange(e_type.size), np.flatnonzero(dup)])
    arrival = np.concatenate([arrival, arrival[dup] + rng.integers(1, 7200, dup.sum()) * SECOND_US])

    events = pa.table(
        {
            "event_id": _ids("e", chunk, e_type.size).take(pa.array(idx)),
            "user_id": user_ids.take(pa.array(e_user[idx])),
            "session_id": _ids("s", chunk, len(s_user)).take(pa.array(e_session[idx])),
            "ts": pa.array(e_ts[idx], pa.timestamp("us", tz="UTC")),
            "event_type": pa.array(type_names[e_type[idx]].astype(str)),
            "dwell_ms": pa.array(dwell[idx], pa.int64(), mask=dwell_null[idx]),
        }
    )
    session_null = rng.random(idx.size) < 0.02
    events = events.set_column(
        2, "session_id", pc.if_else(pa.array(session_null), pa.nulls(idx.size, pa.string()), events.column("session_id"))
    )
    return {
        "events": events,
        "events_arrival_us": pa.array(arrival),
        "transactions": transactions,
        "truth_transactions": truth,
        "truth_users": pa.table(
            {
                "user_id": user_ids,
                "archetype": pa.array(archetype_name.astype(str)),
                "takeover_victim": pa.array(victim),
            }
        ),
    }


def _count_prior(user: np.ndarray, ts: np.ndarray, window_us: int) -> np.ndarray:
    """For rows sorted by (user, ts), users numbered from 0: earlier rows of the same user in the window."""
    if user.size == 0:
        return np.zeros(0, dtype=np.int64)
    rel = ts - ts.min() + window_us
    key = user.astype(np.int64) * (int(rel.max()) + 1) + rel
    return np.arange(user.size) - np.searchsorted(key, key - window_us, side="left")


def _rank_within_group(group_of: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... in order of appearance within each group id."""
    order = np.argsort(group_of, kind="stable")
    starts = np.searchsorted(group_of[order], group_of[order])
    rank = np.empty(group_of.size, dtype=np.int64)
    rank[order] = np.arange(group_of.size) - starts
    return rank


def _ids(prefix: str, chunk: int, n: int, offset: int = 0) -> pa.Array:
    numbers = pc.cast(pa.array(np.arange(offset, offset + n, dtype=np.int64)), pa.string())
    head = f"{prefix}{chunk:04d}-" if prefix != "u" else prefix
    return pc.binary_join_element_wise(pa.scalar(head), numbers, "")

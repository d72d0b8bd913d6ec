"""A drifting week: a separate synthetic world for testing daily runs (`lakelens generate-week`).

A seven-day click-stream world from `clickstream.generate_chunk` (its own seed salt and size, so
it never equals the demo world or a benchmark world), transformed per day, deterministically by
seed. Day numbers below are 1-based (day 1 = `start`):

* **App release, day 4.** From the release day on, `checkout_start`, `enter_payment` and
  `view_cart` are called `checkout_begin`, `payment_details` and `cart`, and every purchase flow
  gets a `confirm_address` step just before its checkout step (before `place_order` where the
  flow has no checkout step). The step gets its own gap (earlier events of the session move
  back by it, so the session still ends seconds before its transaction) and a dwell like the
  session's own. Only events with ts on/after the release day change: a session that would
  reach back across the release midnight gets no new step, and renames go by final ts.
* **New fraud pattern, days 6-7.** Fraudster accounts (new accounts and a few repurposed
  fraudster accounts of the base world) buy through flows with event types nobody has seen
  before (`qr_login`, `device_pair`, `wallet_link`, `instant_payout`), about 70 transactions a
  day at the default size. No label at all (label null); truth says `mo = 'new_pattern'`.
  Expert features are fraud-like but overlap with other fraud and with legitimate users.
* **Timing bot, every day.** Bot accounts replay the purchase flows of the `quick_buyer`
  archetype (the same Markov chain, so the same event types and order) and its browsing, with
  human median gap and dwell but near-constant timing: every gap is 8 s +/- 2 %, every dwell
  5.4 s +/- 2 %, place_order 20 s +/- 2 % before the transaction. About 80 transactions a day at
  the default size; fraud, labelled partially and late like the base world's fraud
  (`mo = 'timing_bot'`). Expert features like the base world's bot checkout, near quick buyers.
* **Sale, days 6-7.** Legitimate users buy about 40 % more often; on those days many of their
  purchase flows open with `view_deals`, some apply a promo (`apply_promo` before payment), and
  half their browsing sessions open with `view_deals`.

The lake has the same tables and contracts as `lakelens generate` (events, transactions with
the expert features, truth/transactions, truth/users), so the jobs run on it unchanged;
truth/transactions adds `mo` (the modus operandi, or the legitimate archetype) and truth/users
adds `week_mo` (the week pattern an account runs, null for ordinary accounts). The same seed
gives byte-identical Parquet whatever the number of workers.

`measure_week_detection` scores one published behavior-clusters run of such a world per MO and
says where the new pattern went.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.storage import Lake
from lakelens.synthetic.clickstream import (
    BEHAVIOUR_ID, BEHAVIOURS, DAY_US, EV, EVENT_TYPES, FRAUDSTER_MOS, LATE_EVENT_TYPE, LEGIT_ARCHETYPES, PROFILES,
    SECOND_US, WorldParams, _count_prior, _diurnal_offsets, generate_chunk, sample_sessions,
)
from lakelens.synthetic.generate import EPOCH, _write_by_day

DEFAULT_USERS = 4500
DEFAULT_SEED = 17
SEED_SALT = 7_000_000  # the base world's seed is SEED_SALT + seed: never a `lakelens generate --seed S` world

RELEASE_DAY = 3  # 0-based day index: start + 3 days (day 4)
NEW_PATTERN_DAY = 5  # days 6 and 7
SALE_DAY = 5  # days 6 and 7

RENAMES = {"checkout_start": "checkout_begin", "enter_payment": "payment_details", "view_cart": "cart"}
RELEASE_STEP = "confirm_address"
NEW_PATTERN_EVENT_TYPES = ("qr_login", "device_pair", "wallet_link", "instant_payout")
TYPES: tuple[str, ...] = EVENT_TYPES + (LATE_EVENT_TYPE,) + tuple(RENAMES.values()) + (RELEASE_STEP,) + NEW_PATTERN_EVENT_TYPES
T = {name: i for i, name in enumerate(TYPES)}
LATE = T[LATE_EVENT_TYPE]

# timing bot: a farm of accounts, each a few purchases a day, every day
BOT_ACCOUNTS = 60  # at DEFAULT_USERS; scaled with the number of users
BOT_TXNS_PER_DAY = 1.35
BOT_BROWSE_PER_DAY = 0.8
BOT_GAP_S = BEHAVIOURS["buy/quick_buyer"].gap_median_s  # 8 s, the quick buyers' median purchase gap
BOT_BROWSE_GAP_S = BEHAVIOURS["browse/quick_buyer"].gap_median_s  # 12 s
BOT_DWELL_SHARE = 0.675  # the middle of the humans' dwell/gap range U(0.4, 0.95)
BOT_PAY_DELAY_S = 20.0  # humans: place_order 2-40 s before the transaction
BOT_JITTER = 0.02

# new pattern: about 70 transactions a day on days 6-7
NEW_PATTERN_PER_DAY = 70.0
NEW_PATTERN_NEW_ACCOUNTS = 28
NEW_PATTERN_REPURPOSED = 12
NEW_PATTERN_BROWSE_PER_DAY = 0.7

SALE_EXTRA = 0.4  # extra purchases, as a share of each legit archetype's daily rate
SALE_VIEW_DEALS = 0.6  # share of legit purchase flows on sale days that open with view_deals
SALE_PROMO = 0.35  # share that apply a promo before payment
SALE_BROWSE_DEALS = 0.5  # share of legit browsing sessions on sale days that open with view_deals
BASE_BROWSE = 1 << 40  # session numbers of the base world's browse sessions (by session id) start here

LEGIT_LABEL_RATE = 0.08  # as the base world: some legitimate transactions are confirmed legit


def generate_week(lake: Lake, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED, start: date = date(2026, 1, 1),
                  days: int = 7, workers: int | None = 1, chunk_users: int = 20_000) -> dict:
    """Write the drifting week into `lake`; returns a summary (per-day transactions, per-MO counts, drifts)."""
    if days < 1 or users < 1:
        raise ValueError("generate_week needs at least one user and one day")
    lake.ensure_root()
    start_day_us = (start - EPOCH).days * DAY_US
    chunks = [(c, min(chunk_users, users - c * chunk_users)) for c in range(math.ceil(users / chunk_users))]
    jobs = [(lake, seed, start_day_us, days, c, n, users, chunk_users) for c, n in chunks]
    began = time.perf_counter()
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        results = list(map(_write_week_chunk, jobs))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_week_chunk, jobs))
    summary = _summarise(results, start, days)
    summary = {
        "world": "week",
        "params": {"users": users, "seed": seed, "base_seed": SEED_SALT + seed, "start": start.isoformat(),
                   "days": days, "chunk_users": chunk_users},
        "drifts": {
            "release": {"day": (start + timedelta(days=RELEASE_DAY)).isoformat(), "renames": RENAMES,
                        "new_step": RELEASE_STEP},
            "new_pattern": {"from": (start + timedelta(days=NEW_PATTERN_DAY)).isoformat(),
                            "event_types": list(NEW_PATTERN_EVENT_TYPES), "labels": "none"},
            "timing_bot": {"gap_s": BOT_GAP_S, "dwell_ms": BOT_GAP_S * 1000 * BOT_DWELL_SHARE, "jitter": BOT_JITTER},
            "sale": {"from": (start + timedelta(days=SALE_DAY)).isoformat(), "extra_purchase_rate": SALE_EXTRA,
                     "view_deals_share": SALE_VIEW_DEALS, "promo_share": SALE_PROMO},
        },
        **summary,
        "seconds": round(time.perf_counter() - began, 2),
        "generated_at": datetime.now(timezone.utc).isoformat(),
    }
    lake.write_json("truth/_world.json", summary)
    return summary


def _write_week_chunk(job: tuple) -> dict:
    lake, seed, start_day_us, days, chunk, n_users, users, chunk_users = job
    world = week_chunk(seed, start_day_us, days, chunk, n_users, users, chunk_users)
    part = f"part-{chunk:05d}.parquet"
    rng = np.random.default_rng([seed, chunk, 71])
    _write_by_day(lake, "events", world["events"], world["events_arrival_us"] // DAY_US, part, rng)
    txn_day = pc.cast(world["transactions"].column("ts"), pa.int64()).to_numpy() // DAY_US
    _write_by_day(lake, "transactions", world["transactions"], txn_day, part, rng)
    _write_by_day(lake, "truth/transactions", world["truth_transactions"], txn_day, part, rng=None)
    lake.write_table(f"truth/users/{part}", world["truth_users"])
    return world["counts"]


# -- one chunk of users --------------------------------------------------------------------------------

def week_chunk(seed: int, start_day_us: int, days: int, chunk: int, n_users: int, users: int,
               chunk_users: int = 20_000) -> dict[str, Any]:
    """The week's tables for users [chunk*chunk_users, +n_users) plus the accounts the week adds."""
    params = WorldParams(seed=SEED_SALT + seed, start_day_us=start_day_us, days=days, chunk_users=chunk_users)
    world = generate_chunk(params, chunk, n_users)
    rng = np.random.default_rng([seed, chunk, 7_777])
    w = _World(world, chunk, start_day_us, days, n_users, next_user=users + chunk * chunk_users, rng=rng)
    w.add_timing_bot()
    w.add_new_pattern()
    w.add_sale()
    w.sale_steps()
    w.release()
    return w.tables()


def _arr(column) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False) if isinstance(column, (pa.Array, pa.ChunkedArray)) else column


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _jitter(rng: np.random.Generator, shape, value: float) -> np.ndarray:
    return value * (1 + rng.uniform(-BOT_JITTER, BOT_JITTER, shape))


class _World:
    """Transactions and events as numpy columns while the week's drifts are applied.

    Events carry `sess`: the row of their transaction for purchase sessions (base ones are found
    from place_order, which ends every purchase session and nothing else), a number past the
    transactions for the week's browse sessions, BASE_BROWSE + k for the base world's browse
    sessions (by session id), -1 for base browse events whose session id is null.
    """

    def __init__(self, world: dict, chunk: int, start_day_us: int, days: int, n_users: int, next_user: int,
                 rng: np.random.Generator) -> None:
        self.chunk, self.start, self.days, self.rng = chunk, start_day_us, days, rng
        self.scale = n_users / DEFAULT_USERS
        self.next_user = next_user
        self.release_us = start_day_us + RELEASE_DAY * DAY_US
        self._base_transactions(world)
        self._base_events(world)
        users = world["truth_users"]
        self.users = {"user_id": _arr(users["user_id"]), "archetype": _arr(users["archetype"]),
                      "takeover_victim": _arr(users["takeover_victim"]),
                      "week_mo": np.full(users.num_rows, None, dtype=object)}
        self._user_history()
        self.next_browse = self.n_base_txn + 10_000_000  # session numbers of the week's browse sessions
        self.new_events: list[dict[str, np.ndarray]] = []
        self.inserted = np.zeros(0, np.int64)  # rows of inserted steps
        self.inherit = np.zeros(0, np.int64)  # inserted steps that take the id of a week session

    # -- base world ----------------------------------------------------------------------------

    def _base_transactions(self, world: dict) -> None:
        t, truth = world["transactions"], world["truth_transactions"]
        self.n_base_txn = t.num_rows
        self.tx = {
            "transaction_id": _arr(t["transaction_id"]), "user_id": _arr(t["user_id"]),
            "ts": pc.cast(t["ts"], pa.int64()).to_numpy(), "amount": _arr(t["amount"]),
            "currency": _arr(t["currency"]), "status": _arr(t["status"]),
            "label": pc.fill_null(t["label"], -1).to_numpy().astype(np.int8),
            "account_age_days": _arr(t["account_age_days"]), "amount_to_user_avg": _arr(t["amount_to_user_avg"]),
            "is_new_device": _arr(t["is_new_device"]), "ip_country_mismatch": _arr(t["ip_country_mismatch"]),
            "payment_method": _arr(t["payment_method"]), "fraud_mo": _arr(truth["fraud_mo"]),
            "archetype": _arr(truth["archetype"]), "bot": np.zeros(t.num_rows, bool),
        }

    def _base_events(self, world: dict) -> None:
        events = world["events"]
        head = f"e{self.chunk:04d}-"
        numbers = pc.cast(pc.utf8_slice_codeunits(events["event_id"], len(head)), pa.int64()).to_numpy()
        off = np.flatnonzero(numbers != np.arange(numbers.size))
        n = int(off[0]) if off.size else numbers.size  # redeliveries are appended after the originals
        arrival = np.asarray(world["events_arrival_us"])
        self.n_base_events = n
        self.dup_of = numbers[n:]
        self.dup_delay = arrival[n:] - arrival[self.dup_of]
        codes = pc.index_in(events["event_type"], value_set=pa.array(TYPES))
        if codes.null_count:
            raise ValueError("the base world has an event type the week does not know")
        typ = codes.to_numpy()[:n].astype(np.int64)
        orders = np.flatnonzero(typ == EV["place_order"])
        if orders.size != self.n_base_txn:
            raise AssertionError("base world changed: place_order no longer ends exactly the purchase sessions")
        sess = np.full(n, -1, dtype=np.int64)
        if orders.size:
            sess[: orders[-1] + 1] = np.searchsorted(orders, np.arange(orders[-1] + 1))
        sid = _arr(events["session_id"])[:n]
        browse = np.flatnonzero((sess < 0) & (sid != None))  # noqa: E711 - object array
        if browse.size:
            sess[browse] = BASE_BROWSE + np.unique(sid[browse].astype(str), return_inverse=True)[1]
        user = _arr(events["user_id"])[:n]
        if orders.size and not (user[orders] == self.tx["user_id"]).all():
            raise AssertionError("base world changed: purchase sessions are no longer in transaction order")
        self.ev = {
            "event_id": _arr(events["event_id"])[:n], "user_id": user, "session_id": sid,
            "ts": pc.cast(events["ts"], pa.int64()).to_numpy()[:n], "typ": typ,
            "dwell": pc.fill_null(events["dwell_ms"], -1).to_numpy()[:n], "arrival": arrival[:n].copy(),
            "sess": sess, "new": np.zeros(n, bool),
        }

    def _user_history(self) -> None:
        """Each base user's amount base and account age at day 0, recovered from their transactions."""
        uid = self.users["user_id"]
        pos = {u: i for i, u in enumerate(uid)}
        at = np.array([pos[u] for u in self.tx["user_id"]], dtype=np.int64)
        ratio = self.tx["amount_to_user_avg"]
        ok = ratio > 0
        base_sum = np.bincount(at[ok], weights=self.tx["amount"][ok] / ratio[ok], minlength=uid.size)
        age_sum = np.bincount(at, weights=self.tx["account_age_days"] - (self.tx["ts"] - self.start) / DAY_US,
                              minlength=uid.size)
        seen = np.bincount(at[ok], minlength=uid.size)
        seen_all = np.bincount(at, minlength=uid.size)
        profile = [PROFILES.get(a, PROFILES["browser"]) for a in self.users["archetype"]]
        lo, hi = np.array([p.account_age_days for p in profile]).T
        sampled_age = np.exp(self.rng.uniform(np.log(lo), np.log(hi)))
        sampled_base = np.exp(np.array([p.amount_log_mean for p in profile]) + self.rng.normal(0, 0.4, uid.size))
        self.amount_base = np.where(seen > 0, base_sum / np.maximum(seen, 1), sampled_base)
        self.age0 = np.where(seen_all > 0, age_sum / np.maximum(seen_all, 1), sampled_age)

    def _new_users(self, n: int, archetype: str) -> np.ndarray:
        ids = np.array([f"u{self.next_user + i}" for i in range(n)], dtype=object)
        self.next_user += n
        self.users = _cat([self.users, {"user_id": ids, "archetype": np.full(n, archetype, dtype=object),
                                        "takeover_victim": np.zeros(n, bool),
                                        "week_mo": np.full(n, archetype, dtype=object)}])
        return ids

    # -- building blocks -----------------------------------------------------------------------

    def _day_ts(self, day: np.ndarray, margin_s: int = 0) -> np.ndarray:
        """A time on each day, busier in the evening; `margin_s` keeps it that far after midnight."""
        offsets = _diurnal_offsets(self.rng, day.size)
        if margin_s:
            offsets = margin_s * SECOND_US + (offsets * (1 - margin_s / 86_400)).astype(np.int64)
        return self.start + day.astype(np.int64) * DAY_US + offsets

    def _chargeback_labels(self, ts: np.ndarray) -> np.ndarray:
        """As the base world labels fraud: partially, and fewer on recent days."""
        days_left = self.days - 1 - (ts - self.start) // DAY_US
        p = np.where(days_left >= 2, 0.45, np.where(days_left == 1, 0.3, 0.12))
        return np.where(self.rng.random(ts.size) < p, 1, -1).astype(np.int8)

    def _add_transactions(self, user_id, ts, amount, amount_base, age, declined_p, new_device_p, mismatch_p,
                          payment_p, label, fraud_mo, archetype, bot=False) -> np.ndarray:
        """Append transactions; returns their rows (which are also their purchase sessions' numbers)."""
        rng, n = self.rng, ts.size
        first = self.tx["ts"].size
        mismatch = rng.random(n) < mismatch_p
        payment = np.array(["card", "wallet", "gift_card"], dtype=object)[
            (rng.random(n)[:, None] > np.cumsum(np.broadcast_to(payment_p, (n, 3)), axis=1)).sum(1).clip(0, 2)]
        amount = np.round(amount, 2)
        rows = {
            "transaction_id": np.full(n, None, dtype=object), "user_id": user_id, "ts": ts, "amount": amount,
            "currency": np.where(mismatch & (rng.random(n) < 0.5), "GBP", "EUR").astype(object),
            "status": np.where(rng.random(n) < declined_p, "declined", "approved").astype(object),
            "label": label.astype(np.int8), "account_age_days": np.round(age, 2),
            "amount_to_user_avg": np.round(amount / amount_base, 3),
            "is_new_device": rng.random(n) < new_device_p, "ip_country_mismatch": mismatch,
            "payment_method": payment, "fraud_mo": np.broadcast_to(np.asarray(fraud_mo, dtype=object), (n,)).copy(),
            "archetype": np.broadcast_to(np.asarray(archetype, dtype=object), (n,)).copy(),
            "bot": np.full(n, bot),
        }
        self.tx = _cat([self.tx, rows])
        return np.arange(first, first + n)

    def _add_sessions(self, steps: np.ndarray, gaps_s: np.ndarray, dwell_ms: np.ndarray, user_id: np.ndarray,
                      sess: np.ndarray, end_ts: np.ndarray | None = None, start_ts: np.ndarray | None = None,
                      late_search: bool = False) -> None:
        """Sessions of the week: `steps` (sessions, L) type codes, -1 padded; gaps_s[:, j] is the gap after event j.

        A session starts at `start_ts` or ends (its last event) at `end_ts`. With `late_search`, some searches
        become `visual_search` from the middle of the world on, as in the base world."""
        valid = steps >= 0
        if not valid.any():
            return
        lengths = valid.sum(1)
        gaps_us = (gaps_s * SECOND_US).astype(np.int64)
        gaps_us[~valid] = 0
        offsets = np.cumsum(gaps_us, axis=1) - gaps_us
        if start_ts is None:
            start_ts = end_ts - offsets[np.arange(len(steps)), np.maximum(lengths - 1, 0)]
        ts = start_ts[:, None] + offsets
        if late_search:
            late = ts >= self.start + (self.days // 2) * DAY_US
            steps = np.where((steps == EV["search"]) & late & (self.rng.random(steps.shape) < 0.15), LATE, steps)
        owner = np.repeat(np.arange(len(steps)), lengths)
        self.new_events.append({
            "event_id": np.full(owner.size, None, dtype=object), "user_id": user_id[owner],
            "session_id": np.full(owner.size, None, dtype=object), "ts": ts[valid],
            "typ": steps[valid].astype(np.int64), "dwell": dwell_ms[valid].astype(np.int64),
            "arrival": np.full(owner.size, -1, dtype=np.int64), "sess": sess[owner], "new": np.ones(owner.size, bool),
        })

    def _human_dwell(self, gaps_s: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """As the base world: the next gap times U(0.4, 0.95); the last event 0; 6 % null, 60 % of last ones."""
        nxt = np.concatenate([gaps_s[:, 1:] * valid[:, 1:], np.zeros((len(gaps_s), 1))], axis=1)
        return self._nulls(nxt * 1000 * self.rng.uniform(0.4, 0.95, gaps_s.shape), valid)

    def _bot_dwell(self, gap_s: float, valid: np.ndarray) -> np.ndarray:
        has_next = np.concatenate([valid[:, 1:], np.zeros((len(valid), 1), bool)], axis=1)
        dwell = _jitter(self.rng, valid.shape, gap_s * 1000 * BOT_DWELL_SHARE) * has_next  # the last event: 0, as everyone's
        return self._nulls(dwell, valid)

    def _nulls(self, dwell: np.ndarray, valid: np.ndarray) -> np.ndarray:
        lengths = valid.sum(1)
        last = np.zeros(valid.shape, bool)
        last[np.arange(len(valid)), np.maximum(lengths - 1, 0)] = lengths > 0
        null = (self.rng.random(valid.shape) < 0.06) | (last & (self.rng.random(valid.shape) < 0.6))
        return np.where(null, -1, dwell.astype(np.int64))

    def _human_gaps(self, behaviour_ids: np.ndarray, shape) -> np.ndarray:
        names = [n for n in BEHAVIOURS]
        median = np.array([BEHAVIOURS[n].gap_median_s for n in names])[behaviour_ids]
        sigma = np.array([BEHAVIOURS[n].gap_sigma for n in names])[behaviour_ids]
        return np.exp(np.log(median)[:, None] + sigma[:, None] * self.rng.standard_normal(shape))

    def _browse_sessions(self, count: int) -> np.ndarray:
        first = self.next_browse
        self.next_browse += count
        return np.arange(first, first + count)

    # -- drifts --------------------------------------------------------------------------------

    def add_timing_bot(self) -> None:
        """Accounts that replay quick buyers' flows with metronome timing, every day."""
        rng, days = self.rng, self.days
        n_acc = max(1, round(BOT_ACCOUNTS * self.scale))
        accounts = self._new_users(n_acc, "timing_bot")
        counts = rng.poisson(BOT_TXNS_PER_DAY, (n_acc, days))
        acc = np.repeat(np.repeat(np.arange(n_acc), days), counts.reshape(-1))
        day = np.repeat(np.tile(np.arange(days), n_acc), counts.reshape(-1))
        ts = self._day_ts(day)
        order = np.lexsort((ts, acc))
        acc, ts = acc[order], ts[order]
        amount_base = np.exp(np.log(70) + rng.normal(0, 0.4, n_acc))
        age0 = np.exp(rng.uniform(np.log(20), np.log(600), n_acc))
        amount = amount_base[acc] * np.exp(rng.normal(0, 0.5, acc.size))
        rows = self._add_transactions(accounts[acc], ts, amount, amount_base[acc], age0[acc] + (ts - self.start) / DAY_US,
                                      0.05, 0.12, 0.05, np.array([0.6, 0.4, 0.0]), self._chargeback_labels(ts),
                                      "timing_bot", "timing_bot", bot=True)
        # purchase flows: the quick buyers' chain, metronome timing
        steps = sample_sessions(np.full(rows.size, BEHAVIOUR_ID["buy/quick_buyer"], dtype=np.int64), rng).astype(np.int64)
        gaps = _jitter(rng, steps.shape, BOT_GAP_S)
        end = ts - (_jitter(rng, rows.size, BOT_PAY_DELAY_S) * SECOND_US).astype(np.int64)
        self._add_sessions(steps, gaps, self._bot_dwell(BOT_GAP_S, steps >= 0), accounts[acc], rows, end_ts=end,
                           late_search=True)
        # browsing, also replayed, from the day before the week (the first day's lookback) on
        b_counts = rng.poisson(BOT_BROWSE_PER_DAY, (n_acc, days + 1))
        b_acc = np.repeat(np.repeat(np.arange(n_acc), days + 1), b_counts.reshape(-1))
        b_day = np.repeat(np.tile(np.arange(-1, days), n_acc), b_counts.reshape(-1))
        b_start = self._day_ts(b_day)
        b_steps = sample_sessions(np.full(b_acc.size, BEHAVIOUR_ID["browse/quick_buyer"], dtype=np.int64), rng).astype(np.int64)
        b_gaps = _jitter(rng, b_steps.shape, BOT_BROWSE_GAP_S)
        self._add_sessions(b_steps, b_gaps, self._bot_dwell(BOT_BROWSE_GAP_S, b_steps >= 0), accounts[b_acc],
                           self._browse_sessions(b_acc.size), start_ts=b_start, late_search=True)

    def add_new_pattern(self) -> None:
        """Days 6-7: a fraud pattern with unseen event types, on new and repurposed fraudster accounts, never labelled."""
        rng = self.rng
        active = np.arange(NEW_PATTERN_DAY, self.days)
        if active.size == 0:
            return
        new_ids = self._new_users(max(1, round(NEW_PATTERN_NEW_ACCOUNTS * self.scale)), "new_pattern")
        fraudsters = np.flatnonzero(np.isin(self.users["archetype"][: self.amount_base.size], FRAUDSTER_MOS))
        reuse = np.sort(rng.choice(fraudsters, min(fraudsters.size, round(NEW_PATTERN_REPURPOSED * self.scale)),
                                   replace=False)) if fraudsters.size else np.zeros(0, np.int64)
        self.users["week_mo"][reuse] = "new_pattern"
        accounts = np.concatenate([new_ids, self.users["user_id"][reuse]])
        n_new = new_ids.size
        amount_base = np.concatenate([np.exp(np.log(90) + rng.normal(0, 0.4, n_new)), self.amount_base[reuse]])
        age_at_start = np.concatenate([np.exp(rng.uniform(np.log(0.5), np.log(20), n_new)) - NEW_PATTERN_DAY,
                                       self.age0[reuse]])
        archetype = np.concatenate([np.full(n_new, "new_pattern", dtype=object), self.users["archetype"][reuse]])
        per_day = rng.poisson(NEW_PATTERN_PER_DAY * self.scale, active.size)
        day = np.repeat(active, per_day)
        acc = rng.integers(0, accounts.size, day.size)
        ts = self._day_ts(day, margin_s=3600)  # whole sessions on their day
        order = np.lexsort((ts, acc))
        acc, ts, day = acc[order], ts[order], day[order]
        amount = np.exp(np.log(110) + rng.normal(0, 0.6, acc.size))
        rows = self._add_transactions(accounts[acc], ts, amount, amount_base[acc],
                                      age_at_start[acc] + (ts - self.start) / DAY_US, 0.12, 0.45, 0.25,
                                      np.array([0.25, 0.7, 0.05]), np.full(acc.size, -1), "new_pattern", archetype[acc])
        steps = _pad([_new_pattern_flow(rng) for _ in range(rows.size)])
        gaps = np.exp(np.log(4.0) + 0.6 * rng.standard_normal(steps.shape))
        end = ts - rng.integers(2, 40, rows.size) * SECOND_US
        self._add_sessions(steps, gaps, self._human_dwell(gaps, steps >= 0), accounts[acc], rows, end_ts=end)
        # some account activity between purchases, on the same days
        counts = rng.poisson(NEW_PATTERN_BROWSE_PER_DAY, (accounts.size, active.size))
        b_acc = np.repeat(np.repeat(np.arange(accounts.size), active.size), counts.reshape(-1))
        b_day = np.repeat(np.tile(active, accounts.size), counts.reshape(-1))
        b_steps = _pad([_new_pattern_browse(rng) for _ in range(b_acc.size)])
        b_gaps = np.exp(np.log(5.0) + 0.6 * rng.standard_normal(b_steps.shape))
        self._add_sessions(b_steps, b_gaps, self._human_dwell(b_gaps, b_steps >= 0), accounts[b_acc],
                           self._browse_sessions(b_acc.size), start_ts=self._day_ts(b_day, margin_s=3600))

    def add_sale(self) -> None:
        """Days 6-7: legitimate users buy more often (their own archetype's purchase flows; the deal steps come later)."""
        rng = self.rng
        sale_days = np.arange(SALE_DAY, self.days)
        n_base_users = self.amount_base.size
        legit = np.flatnonzero(np.isin(self.users["archetype"][:n_base_users], LEGIT_ARCHETYPES))
        if sale_days.size == 0 or legit.size == 0:
            return
        arch = self.users["archetype"][legit]
        rate = SALE_EXTRA * np.array([PROFILES[a].txns_per_day for a in arch])
        counts = rng.poisson(rate[:, None], (legit.size, sale_days.size))
        who = np.repeat(np.repeat(legit, sale_days.size), counts.reshape(-1))
        day = np.repeat(np.tile(sale_days, legit.size), counts.reshape(-1))
        ts = self._day_ts(day)
        if who.size == 0:
            return
        order = np.lexsort((ts, who))
        who, ts = who[order], ts[order]
        arch = self.users["archetype"][who]
        prof = [PROFILES[a] for a in arch]
        amount = self.amount_base[who] * np.exp(rng.normal(-0.15, 0.5, who.size))  # sale prices
        label = np.where(rng.random(who.size) < LEGIT_LABEL_RATE, 0, -1)
        rows = self._add_transactions(
            self.users["user_id"][who], ts, amount, self.amount_base[who], self.age0[who] + (ts - self.start) / DAY_US,
            np.array([p.declined for p in prof]), np.array([p.new_device for p in prof]),
            np.array([p.country_mismatch for p in prof]), np.array([p.payment for p in prof]), label, "none", arch)
        behaviour = np.array([BEHAVIOUR_ID[f"buy/{a}"] for a in arch], dtype=np.int64)
        steps = sample_sessions(behaviour, rng).astype(np.int64)
        gaps = self._human_gaps(behaviour, steps.shape)
        end = ts - rng.integers(2, 40, rows.size) * SECOND_US
        self._add_sessions(steps, gaps, self._human_dwell(gaps, steps >= 0), self.users["user_id"][who], rows,
                           end_ts=end, late_search=True)

    def _all_events(self) -> dict[str, np.ndarray]:
        if self.new_events:
            self.ev = _cat([self.ev, *self.new_events])
            self.new_events = []
        return self.ev

    def sale_steps(self) -> None:
        """On sale days, legitimate purchase flows open with view_deals and some apply a promo before paying."""
        ev = self._all_events()
        tx = self.tx
        day = (tx["ts"] - self.start) // DAY_US
        legit = np.flatnonzero((tx["fraud_mo"] == "none") & ~tx["bot"] & (day >= SALE_DAY))
        if legit.size == 0:
            return
        deals = legit[self.rng.random(legit.size) < SALE_VIEW_DEALS]
        promo = legit[self.rng.random(legit.size) < SALE_PROMO]
        gap = self._session_gaps(deals)
        self._insert_before(deals, None, T["view_deals"], gap, self._dwell_for(gap), skip_if_first=T["view_deals"])
        gap = self._session_gaps(promo)
        self._insert_before(promo, [[T["enter_payment"]], [T["place_order"]]], T["apply_promo"], gap, self._dwell_for(gap))
        # the sale banner: legitimate browsing on sale days often opens with the deals too
        browse = np.unique(ev["sess"][ev["sess"] >= BASE_BROWSE])
        rows, owner = self._locate(browse)
        first = rows[np.unique(owner, return_index=True)[1]]
        legit_users = self.users["user_id"][np.isin(self.users["archetype"], LEGIT_ARCHETYPES)]
        on_sale = (ev["ts"][first] >= self.start + SALE_DAY * DAY_US) & np.isin(ev["user_id"][first], legit_users)
        chosen = browse[on_sale & (self.rng.random(browse.size) < SALE_BROWSE_DEALS)]
        gap = self._session_gaps(chosen)
        self._insert_before(chosen, None, T["view_deals"], gap, self._dwell_for(gap), skip_if_first=T["view_deals"],
                            min_ts=self.start + SALE_DAY * DAY_US)

    def release(self) -> None:
        """Day 4: confirm_address before the checkout step of every purchase flow, then the renames, by ts."""
        ev = self._all_events()
        sessions = np.arange(self.tx["ts"].size)
        bot = self.tx["bot"]
        gap = self._session_gaps(sessions)
        gap[bot] = _jitter(self.rng, int(bot.sum()), BOT_GAP_S)
        dwell = self._dwell_for(gap)
        dwell[bot] = _jitter(self.rng, int(bot.sum()), BOT_GAP_S * 1000 * BOT_DWELL_SHARE).astype(np.int64)
        self._insert_before(sessions, [[T["checkout_start"]], [T["place_order"]]], T[RELEASE_STEP], gap, dwell,
                            min_ts=self.release_us)
        ev = self.ev
        after = ev["ts"] >= self.release_us
        for old, new in RENAMES.items():
            ev["typ"][after & (ev["typ"] == T[old])] = T[new]

    def _session_gaps(self, sessions: np.ndarray) -> np.ndarray:
        """A gap for a new step of each session: its own typical (geometric mean) gap, varied like a human's."""
        ev = self.ev
        if sessions.size == 0:
            return np.zeros(0)
        order, of = self._locate(sessions)
        same = of[1:] == of[:-1]
        diffs = np.diff(ev["ts"][order])[same] / SECOND_US
        owner = of[1:][same]
        logs = np.log(np.maximum(diffs, 0.05))
        n = np.bincount(owner, minlength=sessions.size)
        mean = np.bincount(owner, weights=logs, minlength=sessions.size) / np.maximum(n, 1)
        typical = np.where(n > 0, np.exp(mean), 8.0)
        return typical * np.exp(0.4 * self.rng.standard_normal(sessions.size))

    def _locate(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The event rows of `sessions` (sorted, unique numbers) in session and time order, and each row's session
        as an index into `sessions`."""
        sess = self.ev["sess"]
        at = np.searchsorted(sessions, sess)
        hit = np.flatnonzero((sess >= 0) & (at < sessions.size))
        hit = hit[sessions[at[hit]] == sess[hit]]
        rows = hit[np.lexsort((self.ev["ts"][hit], sess[hit]))]
        return rows, at[rows]

    def _dwell_for(self, gap_s: np.ndarray) -> np.ndarray:
        dwell = (gap_s * 1000 * self.rng.uniform(0.4, 0.95, gap_s.size)).astype(np.int64)
        return np.where(self.rng.random(gap_s.size) < 0.06, -1, dwell)

    def _insert_before(self, sessions: np.ndarray, anchors: list[list[int]] | None, code: int, gap_s: np.ndarray,
                       dwell_ms: np.ndarray, min_ts: int | None = None, skip_if_first: int | None = None) -> None:
        """Insert one `code` event before each session's anchor: the first event of the first anchor list that the
        session has (`None`: its first event). Earlier events of the session move back by the step's gap, so the
        session still ends where it did; with `min_ts`, a session that would then start before it is left alone."""
        ev = self.ev
        if sessions.size == 0:
            return
        sess = ev["sess"]
        rows, owner = self._locate(sessions)
        anchor = np.full(sessions.size, -1, dtype=np.int64)
        for codes in anchors or [None]:
            chosen = np.ones(rows.size, bool) if codes is None else np.isin(ev["typ"][rows], codes)
            pick, who = rows[chosen], owner[chosen]
            first = np.unique(who, return_index=True)
            fill = anchor[first[0]] < 0
            anchor[first[0][fill]] = pick[first[1][fill]]
        begin = np.full(sessions.size, -1, dtype=np.int64)
        firsts = np.unique(owner, return_index=True)
        begin[firsts[0]] = rows[firsts[1]]
        gap_us = (gap_s * SECOND_US).astype(np.int64)
        ok = anchor >= 0
        if min_ts is not None:
            ok &= ev["ts"][np.maximum(begin, 0)] - gap_us >= min_ts
        if skip_if_first is not None:
            ok &= ev["typ"][np.maximum(begin, 0)] != skip_if_first
        anchor_ts = np.where(ok, ev["ts"][np.maximum(anchor, 0)], 0)
        move = ok[owner] & (ev["ts"][rows] < anchor_ts[owner])
        moved = rows[move]
        ev["ts"][moved] -= gap_us[owner[move]]
        base = ~ev["new"][moved]
        ev["arrival"][moved[base]] -= gap_us[owner[move][base]]
        at = anchor[ok]
        n = at.size
        self.ev = _cat([ev, {
            "event_id": np.full(n, None, dtype=object), "user_id": ev["user_id"][at],
            "session_id": ev["session_id"][at].copy(), "ts": ev["ts"][at] - gap_us[ok], "typ": np.full(n, code),
            "dwell": dwell_ms[ok].astype(np.int64), "arrival": np.full(n, -1, dtype=np.int64), "sess": sess[at],
            # inserted steps take their anchor's session id, which is set (or null) already: mark them
            "new": np.ones(n, bool),
        }])
        first_new = self.ev["ts"].size - n
        self.inserted = np.concatenate([self.inserted, np.arange(first_new, first_new + n)])
        # a week-session anchor has no session id yet: the finished table gives it the session's id
        self.inherit = np.concatenate([self.inherit, np.arange(first_new, first_new + n)[ev["new"][at]]])

    # -- tables --------------------------------------------------------------------------------

    def tables(self) -> dict[str, Any]:
        ev, tx, rng, chunk = self._all_events(), self.tx, self.rng, self.chunk
        n_ev = ev["ts"].size
        inserted = np.zeros(n_ev, bool)
        inserted[self.inserted] = True
        inherit = np.zeros(n_ev, bool)
        inherit[self.inherit] = True
        # ids for the week's transactions and events, in order of creation
        new_txn = tx["transaction_id"] == None  # noqa: E711 - object array
        tx["transaction_id"][new_txn] = [f"t{chunk:04d}-{self.n_base_txn + i}" for i in range(int(new_txn.sum()))]
        new_ev = np.flatnonzero(ev["new"])
        ev["event_id"][new_ev] = [f"e{chunk:04d}-{self.n_base_events + i}" for i in range(new_ev.size)]
        # session ids: the week's sessions get their own; steps inserted into them take theirs; 2 % are lost
        own = ev["new"] & ~inserted
        sess_name = {}
        for s in np.unique(ev["sess"][own | inherit]):
            sess_name[int(s)] = f"s{chunk:04d}-w{int(s)}"
        fill = np.flatnonzero(own | inherit)
        ev["session_id"][fill] = [sess_name[int(s)] for s in ev["sess"][fill]]
        lost = own & (rng.random(n_ev) < 0.02)
        ev["session_id"][lost] = None
        # arrival of the week's events: mostly seconds late, sometimes hours; a few are delivered twice
        late = rng.random(new_ev.size) < 0.02
        delay = np.where(late, rng.integers(1, 20, new_ev.size) * 3600, rng.exponential(30, new_ev.size))
        ev["arrival"][new_ev] = ev["ts"][new_ev] + (delay * SECOND_US).astype(np.int64)
        twice = new_ev[rng.random(new_ev.size) < 0.003]
        dup_rows = np.concatenate([self.dup_of, twice])
        dup_arrival = np.concatenate([ev["arrival"][self.dup_of] + self.dup_delay,
                                      ev["arrival"][twice] + rng.integers(1, 7200, twice.size) * SECOND_US])
        take = np.concatenate([np.arange(n_ev), dup_rows])
        arrival = np.concatenate([ev["arrival"], dup_arrival])
        dwell = ev["dwell"][take]
        events = pa.table({
            "event_id": pa.array(ev["event_id"][take], pa.string()),
            "user_id": pa.array(ev["user_id"][take], pa.string()),
            "session_id": pa.array(ev["session_id"][take], pa.string()),
            "ts": pa.array(ev["ts"][take], pa.timestamp("us", tz="UTC")),
            "event_type": pa.array(np.array(TYPES, dtype=object)[ev["typ"][take]], pa.string()),
            "dwell_ms": pa.array(np.maximum(dwell, 0), pa.int64(), mask=dwell < 0),
        })
        # transactions: velocity over everything each user now does
        codes = np.unique(tx["user_id"], return_inverse=True)[1]
        order = np.lexsort((tx["ts"], codes))
        velocity = np.empty(codes.size, dtype=np.int64)
        velocity[order] = _count_prior(codes[order], tx["ts"][order], 24 * 3600 * SECOND_US)
        label = tx["label"]
        transactions = pa.table({
            "transaction_id": pa.array(tx["transaction_id"], pa.string()),
            "user_id": pa.array(tx["user_id"], pa.string()),
            "ts": pa.array(tx["ts"], pa.timestamp("us", tz="UTC")),
            "amount": pa.array(tx["amount"], pa.float64()),
            "currency": pa.array(tx["currency"], pa.string()),
            "status": pa.array(tx["status"], pa.string()),
            "label": pa.array(np.maximum(label, 0), pa.int8(), mask=label < 0),
            "account_age_days": pa.array(tx["account_age_days"], pa.float64()),
            "txn_velocity_24h": pa.array(velocity, pa.int64()),
            "amount_to_user_avg": pa.array(tx["amount_to_user_avg"], pa.float64()),
            "is_new_device": pa.array(tx["is_new_device"], pa.bool_()),
            "ip_country_mismatch": pa.array(tx["ip_country_mismatch"], pa.bool_()),
            "payment_method": pa.array(tx["payment_method"], pa.string()),
            "hour_of_day": pa.array((tx["ts"] % DAY_US) // (3600 * SECOND_US), pa.int64()),
        })
        mo = np.where(tx["fraud_mo"] == "none", tx["archetype"], tx["fraud_mo"])
        truth = pa.table({
            "transaction_id": transactions.column("transaction_id"), "user_id": transactions.column("user_id"),
            "ts": transactions.column("ts"), "is_fraud": pa.array(tx["fraud_mo"] != "none"),
            "fraud_mo": pa.array(tx["fraud_mo"], pa.string()), "archetype": pa.array(tx["archetype"], pa.string()),
            "mo": pa.array(mo, pa.string()),
        })
        users = pa.table({"user_id": pa.array(self.users["user_id"], pa.string()),
                          "archetype": pa.array(self.users["archetype"], pa.string()),
                          "takeover_victim": pa.array(self.users["takeover_victim"], pa.bool_()),
                          "week_mo": pa.array(self.users["week_mo"], pa.string())})
        return {"events": events, "events_arrival_us": arrival, "transactions": transactions,
                "truth_transactions": truth, "truth_users": users,
                "counts": _chunk_counts(self.start, tx, mo, ev, inserted)}


def _new_pattern_flow(rng: np.random.Generator) -> list[int]:
    """A purchase through the new pattern: QR login, device pairing, a wallet link, instant payout."""
    steps = ["app_open"] if rng.random() < 0.5 else []
    steps += ["qr_login"] * (1 + (rng.random() < 0.3))
    steps += ["device_pair"] if rng.random() < 0.5 else []
    steps += ["wallet_link"] * (1 + (rng.random() < 0.25))
    steps += ["view_item"] * ((rng.random() < 0.6) + (rng.random() < 0.2))
    steps += ["add_to_cart", "checkout_start", "enter_payment"]
    steps += ["instant_payout"] if rng.random() < 0.85 else []
    return [T[s] for s in steps + ["place_order"]]


def _new_pattern_browse(rng: np.random.Generator) -> list[int]:
    steps = ["qr_login", "view_account"]
    steps += ["wallet_link"] if rng.random() < 0.6 else []
    steps += ["instant_payout"] if rng.random() < 0.3 else []
    steps += ["gift_card_balance"] if rng.random() < 0.3 else []
    return [T[s] for s in steps]


def _pad(flows: list[list[int]]) -> np.ndarray:
    out = np.full((len(flows), max([len(f) for f in flows], default=1)), -1, dtype=np.int64)
    for i, flow in enumerate(flows):
        out[i, : len(flow)] = flow
    return out


def _chunk_counts(start_us: int, tx: dict, mo: np.ndarray, ev: dict, inserted: np.ndarray) -> dict:
    """Per day: transactions per MO, labelled ones, and the events that show the drifts."""
    out: dict[str, dict] = {"transactions": {}, "labelled": {}, "events": {}}
    day = (tx["ts"] - start_us) // DAY_US
    for d, m, lab in zip(day.tolist(), mo.tolist(), (tx["label"] >= 0).tolist()):
        key = f"{d}|{m}"
        out["transactions"][key] = out["transactions"].get(key, 0) + 1
        if lab:
            out["labelled"][key] = out["labelled"].get(key, 0) + 1
    e_day = (ev["ts"] - start_us) // DAY_US
    watch = {T[RELEASE_STEP]: RELEASE_STEP, T["view_deals"]: "view_deals", T["apply_promo"]: "apply_promo",
             **{T[new]: new for new in RENAMES.values()}, **{T[t]: t for t in NEW_PATTERN_EVENT_TYPES}}
    for d in np.unique(e_day).tolist():
        in_day = e_day == d
        row = {"all": int(in_day.sum())}
        for code, name in watch.items():
            row[name] = int((in_day & (ev["typ"] == code)).sum())
        out["events"][str(d)] = row
    return out


def _summarise(results: list[dict], start: date, days: int) -> dict:
    per_day: dict[str, dict[str, int]] = {}
    labelled: dict[str, dict[str, int]] = {}
    for counts in results:
        for target, source in ((per_day, counts["transactions"]), (labelled, counts["labelled"])):
            for key, n in source.items():
                d, m = key.split("|", 1)
                dt = (start + timedelta(days=int(d))).isoformat()
                target.setdefault(dt, {})[m] = target.setdefault(dt, {}).get(m, 0) + n
    events: dict[str, dict[str, int]] = {}
    for counts in results:
        for d, row in counts["events"].items():
            dt = (start + timedelta(days=int(d))).isoformat()
            slot = events.setdefault(dt, {})
            for k, n in row.items():
                slot[k] = slot.get(k, 0) + n
    fraud = set(("account_takeover", "card_testing", "bot_checkout", "promo_abuse", "timing_bot", "new_pattern"))
    days_sorted = sorted(per_day)
    return {
        "rows": {"transactions": sum(sum(v.values()) for v in per_day.values()),
                 "fraud_transactions": sum(n for v in per_day.values() for m, n in v.items() if m in fraud),
                 "events": sum(v["all"] for v in events.values())},
        "transactions_per_day": {d: sum(per_day[d].values()) for d in days_sorted},
        "mo_per_day": {d: dict(sorted(per_day[d].items())) for d in days_sorted},
        "labelled_per_day": {d: dict(sorted(labelled.get(d, {}).items())) for d in days_sorted},
        "new_pattern_per_day": {d: per_day[d].get("new_pattern", 0) for d in days_sorted},
        "timing_bot_per_day": {d: per_day[d].get("timing_bot", 0) for d in days_sorted},
        "drift_events_per_day": {d: events[d] for d in sorted(events)},
    }


# -- scoring ----------------------------------------------------------------------------------------

def measure_week_detection(lake: Lake, manifest: dict[str, Any]) -> dict[str, Any]:
    """Detection numbers of one published behavior-clusters run, overall, per MO, and for the week's patterns.

    Over the run's window (its input transactions) joined with truth/transactions:
    * overall: `recall` is the share of unlabelled fraud inside flagged clusters, `surfaced_recall` the
      share inside clusters that reach reviewers (flagged, or emerging: a pattern with no labels cannot be
      flagged from risk, only shown), `precision` the share of flagged-cluster members that are fraud;
    * per MO (`mo`, or fraud_mo/archetype for worlds without it): transactions, unlabelled fraud, `recall`
      (its unlabelled transactions inside flagged clusters; None for legitimate archetypes), `flagged`
      (its members in flagged clusters), `flagged_share`, `share_of_flagged` (of all flagged members), and
      `precision`: the fraud share among members of the flagged clusters that hold any of its transactions;
    * `new_pattern` and `timing_bot`: which cluster keys hold their members (noise counted apart), the share
      of their members in their dominant cluster, that cluster's purity (share of its members of that MO),
      size, lineage_status, flagged and emerging.
    """
    con = lake.duckdb_connect()

    def files(table: str) -> str:
        return "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in manifest["outputs"][table]["files"]) + "]"

    truth = lake.uri("truth", "transactions") + "/**/*.parquet"
    window = "[" + ", ".join(f"'{lake.uri(i['path'])}'" for i in manifest["inputs"] if i["table"] == "transactions") + "]"
    truth_cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{truth}', union_by_name = true)").fetchall()}
    mo = "tt.mo" if "mo" in truth_cols else "CASE WHEN tt.fraud_mo = 'none' THEN tt.archetype ELSE tt.fraud_mo END"
    con.execute(f"""
        CREATE TEMP TABLE t AS
        WITH members AS (SELECT x.transaction_id, x.cluster_key FROM read_parquet({files('txn_clusters')}) x),
             c AS (SELECT cluster_key, flagged, lineage_status, size, emerging FROM read_parquet({files('clusters')}))
        SELECT t.transaction_id, t.label, tt.is_fraud, {mo} AS mo, m.cluster_key,
               coalesce(c.flagged, false) AS flagged, c.lineage_status, c.emerging
        FROM read_parquet({window}, union_by_name = true) t
        JOIN read_parquet('{truth}', union_by_name = true) tt USING (transaction_id)
        LEFT JOIN members m USING (transaction_id)
        LEFT JOIN c USING (cluster_key)""")
    total, unlabelled, caught, surfaced, flagged, flagged_fraud = con.execute("""
        SELECT count(*), count(*) FILTER (is_fraud AND label IS NULL), count(*) FILTER (is_fraud AND label IS NULL AND flagged),
               count(*) FILTER (is_fraud AND label IS NULL AND (flagged OR coalesce(emerging, false))),
               count(*) FILTER (flagged), count(*) FILTER (flagged AND is_fraud) FROM t""").fetchone()
    n_flagged_clusters = con.execute(f"SELECT count(*) FROM read_parquet({files('clusters')}) WHERE flagged").fetchone()[0]
    overall = {"transactions": total, "unlabelled_fraud": unlabelled, "caught": caught,
               "recall": caught / max(unlabelled, 1), "surfaced": surfaced,
               "surfaced_recall": surfaced / max(unlabelled, 1), "flagged_members": flagged,
               "precision": flagged_fraud / max(flagged, 1), "flagged_clusters": n_flagged_clusters}
    per_mo = {}
    rows = con.execute("""
        WITH flagged_clusters AS (SELECT cluster_key, count(*) AS members, count(*) FILTER (is_fraud) AS fraud
                                  FROM t WHERE flagged GROUP BY ALL),
             mo_clusters AS (SELECT DISTINCT mo, cluster_key FROM t WHERE flagged),
             mo_precision AS (SELECT mo, sum(f.fraud) AS fraud, sum(f.members) AS members
                              FROM mo_clusters JOIN flagged_clusters f USING (cluster_key) GROUP BY ALL)
        SELECT mo, bool_or(is_fraud), count(*), count(*) FILTER (is_fraud AND label IS NULL),
               count(*) FILTER (is_fraud AND label IS NULL AND flagged),
               count(*) FILTER (is_fraud AND label IS NULL AND (flagged OR coalesce(emerging, false))),
               count(*) FILTER (flagged), any_value(p.fraud), any_value(p.members)
        FROM t LEFT JOIN mo_precision p USING (mo) GROUP BY mo ORDER BY mo""").fetchall()
    for name, is_fraud, n, unl, cau, sur, flg, p_fraud, p_members in rows:
        per_mo[name] = {"fraud": bool(is_fraud), "transactions": n, "unlabelled_fraud": unl, "caught": cau,
                        "recall": (cau / unl if unl else 0.0) if is_fraud else None,
                        "surfaced_recall": (sur / unl if unl else 0.0) if is_fraud else None, "flagged": flg,
                        "flagged_share": flg / n if n else 0.0, "share_of_flagged": flg / flagged if flagged else 0.0,
                        "precision": (p_fraud / p_members) if p_members else None}
    return {"run_id": manifest.get("run_id"), "partition": manifest.get("partition"), "overall": overall,
            "per_mo": per_mo, "new_pattern": _pattern(con, "new_pattern"), "timing_bot": _pattern(con, "timing_bot")}


def _pattern(con, mo: str) -> dict[str, Any]:
    """Where one MO's transactions of the window went."""
    members = con.execute("SELECT count(*), count(*) FILTER (cluster_key IS NULL) FROM t WHERE mo = ?", [mo]).fetchone()
    clusters = con.execute("""
        WITH sizes AS (SELECT cluster_key, count(*) AS size, count(*) FILTER (mo = ?) AS ours,
                              any_value(flagged) AS flagged, any_value(lineage_status) AS lineage_status,
                              any_value(emerging) AS emerging
                       FROM t WHERE cluster_key IS NOT NULL GROUP BY ALL)
        SELECT cluster_key, ours, size, flagged, lineage_status, emerging FROM sizes WHERE ours > 0
        ORDER BY ours DESC, cluster_key""", [mo]).fetchall()
    out: dict[str, Any] = {"transactions": members[0], "noise": members[1],
                           "clusters": {k: ours for k, ours, *_ in clusters}, "dominant_cluster": None,
                           "dominant_share": 0.0, "dominant_purity": None, "dominant_size": None,
                           "dominant_lineage_status": None, "dominant_flagged": None, "dominant_emerging": None}
    if clusters:
        key, ours, size, flagged, lineage, emerging = clusters[0]
        out.update(dominant_cluster=key, dominant_share=ours / members[0], dominant_purity=ours / size,
                   dominant_size=size, dominant_lineage_status=lineage, dominant_flagged=bool(flagged),
                   dominant_emerging=None if emerging is None else bool(emerging))
    return out

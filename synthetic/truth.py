"""How well published results recover a synthetic world's planted truth (tests and benchmarks only).

* Encoder: on users the encoder never trained on, kNN purity of the truth archetype (fraud MO
  where there is one) for the embedding and for the expert features alone, and how often
  attention puts an account takeover's credential changes among the top events.
* Detection: of the planted fraud that had no label, the share inside flagged clusters, and the
  share of flagged-cluster members that are fraud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.catalog import open_catalog
from lakelens.infra.storage import Lake
from lakelens.operators.encoder.quality import knn_purity, top_k_hit_rate
from lakelens.operators.features import ExpertFeatureEncoder
from lakelens.pipelines.embed import TABLE
from lakelens.pipelines.train_encoder import held_out_users

ATO_DEFINING_EVENTS = frozenset({"password_reset_request", "password_reset_complete", "change_password",
                                 "change_email", "change_address", "change_phone"})


@dataclass(frozen=True)
class EncoderQuality:
    held_out_sequences: int
    classes: int
    embedding_purity: float
    expert_purity: float
    ato_sequences: int
    ato_top3_hit_rate: float

    def describe(self) -> str:
        return (f"kNN(10) purity on {self.held_out_sequences:,} held-out sequences ({self.classes} classes): "
                f"embedding {self.embedding_purity:.3f}, expert features {self.expert_purity:.3f}; "
                f"account takeover: credential change in top-3 attention for {self.ato_top3_hit_rate:.1%} "
                f"of {self.ato_sequences}")


def embeddings_with_truth(lake: Lake) -> pa.Table:
    con = open_catalog(lake)
    truth = lake.uri("truth", "transactions") + "/**/*.parquet"
    return con.execute(f"""
        SELECT e.transaction_id, e.user_id, e.embedding, e.top_events,
               t.* EXCLUDE (transaction_id, user_id, ts, dt),
               CASE WHEN tt.fraud_mo = 'none' THEN tt.archetype ELSE tt.fraud_mo END AS truth
        FROM {TABLE} e JOIN transactions t USING (transaction_id)
        JOIN read_parquet('{truth}') tt USING (transaction_id)
        ORDER BY e.transaction_id""").to_arrow_table()


def measure_encoder_quality(lake: Lake, card: dict[str, Any], k: int = 10) -> EncoderQuality:
    table = embeddings_with_truth(lake)
    held = table.filter(pa.array(held_out_users(table.column("user_id"), card["config"]["valid_fraction"])))
    labels = held.column("truth").to_numpy(zero_copy_only=False)
    embedding = np.array(held.column("embedding").to_pylist(), dtype=np.float32)
    experts = ExpertFeatureEncoder().fit(held).transform(held)
    ato = table.filter(pc.equal(table.column("truth"), "account_takeover")).column("top_events").to_pylist()
    hit = top_k_hit_rate([[e["weight"] for e in t] for t in ato], [[e["event_type"] for e in t] for t in ato],
                         set(ATO_DEFINING_EVENTS), k=3)
    return EncoderQuality(len(labels), len(set(labels)), knn_purity(embedding, labels, k), knn_purity(experts, labels, k),
                          len(ato), hit)


@dataclass(frozen=True)
class Detection:
    transactions: int
    unlabelled_fraud: int
    caught: float  # share of unlabelled planted fraud inside flagged clusters
    flagged_members: int
    precision: float  # share of flagged-cluster members that are planted fraud
    flagged_clusters: int

    def describe(self) -> str:
        return (f"{self.flagged_clusters} flagged clusters with {self.flagged_members:,} members: "
                f"{self.precision:.1%} are fraud; they catch {self.caught:.1%} of the "
                f"{self.unlabelled_fraud:,} unlabelled planted fraud among {self.transactions:,} transactions")


def measure_detection(lake: Lake, manifest: dict[str, Any]) -> Detection:
    """Detection numbers of one published behavior-clusters run."""
    con = lake.duckdb_connect()

    def files(table: str) -> str:
        return "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in manifest["outputs"][table]["files"]) + "]"

    truth = lake.uri("truth", "transactions") + "/**/*.parquet"
    window = "[" + ", ".join(f"'{lake.uri(i['path'])}'" for i in manifest["inputs"] if i["table"] == "transactions") + "]"
    row = con.execute(f"""
        WITH members AS (SELECT x.transaction_id, coalesce(c.flagged, false) AS flagged
                         FROM read_parquet({files('txn_clusters')}) x
                         LEFT JOIN read_parquet({files('clusters')}) c USING (cluster_key)),
             t AS (SELECT t.transaction_id, t.label, tt.is_fraud, coalesce(m.flagged, false) AS flagged
                   FROM read_parquet({window}, union_by_name = true) t
                   JOIN read_parquet('{truth}') tt USING (transaction_id)
                   LEFT JOIN members m USING (transaction_id))
        SELECT count(*), count(*) FILTER (is_fraud AND label IS NULL),
               count(*) FILTER (is_fraud AND label IS NULL AND flagged), count(*) FILTER (flagged),
               count(*) FILTER (flagged AND is_fraud)
        FROM t""").fetchone()
    total, unlabelled, caught, flagged, flagged_fraud = row
    clusters = con.execute(f"SELECT count(*) FROM read_parquet({files('clusters')}) WHERE flagged").fetchone()[0]
    return Detection(total, unlabelled, caught / max(unlabelled, 1), flagged, flagged_fraud / max(flagged, 1), clusters)

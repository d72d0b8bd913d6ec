"""`lakelens search`: components of an analysed model ranked by how well they match a text (a query, not a job).

    text --foundation model of the model's visible semantic-lens run--> text vectors
        --> catalog: rank `components` by alignment in DuckDB
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakelens.infra.catalog import rank_components
from lakelens.infra.errors import InputError
from lakelens.infra.model_store import ModelStore
from lakelens.infra.runs import visible_run
from lakelens.infra.storage import Lake
from lakelens.pipelines.semantic_lens import JOB as LENS_JOB


def search_components(lake: Lake, text: str, model_id: str, top: int = 10) -> pa.Table:
    """The same measure as labels: mean over templates of cos(v, E(template(text))) - cos(v, E(template("")))."""
    from lakelens.operators.lens.foundation import load_foundation

    run = visible_run(lake, LENS_JOB, f"model={model_id}")
    if run is None:
        raise InputError(f"no published semantic-lens run for model {model_id!r}; run `lakelens run semantic-lens`")
    lens = run["params"]["lens"]
    foundation = load_foundation(lens["foundation"], ModelStore(lake).local_copy(lens["foundation_weights"]))
    templates = lens["templates"]
    texts = foundation.embed_texts([t.format(text) for t in templates]).astype(np.float32)
    empties = foundation.embed_texts([t.format("") for t in templates]).astype(np.float32)
    return rank_components(lake, model_id, texts, empties, top)

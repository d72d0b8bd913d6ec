"""`lakelens compare-models`: shared and unique concepts of two analysed models, as `model_comparisons`.

    components(model A), components(model B)   [the visible semantic-lens runs; same foundation model]
        --> compare_components --> model_comparisons --> publish
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lakelens.infra.config import LakelensConfig
from lakelens.infra.errors import InputError
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.runs import Run, output_files, visible_runs
from lakelens.infra.storage import Lake
from lakelens.operators.lens.semantics import COMPARISONS_SCHEMA, compare_components
from lakelens.pipelines.semantic_lens import JOB as LENS_JOB

JOB = "compare-models"


def plan_compare_models(lake: Lake, model_a: str, model_b: str, min_alignment: float = 0.02,
                        match_cosine: float = 0.9) -> Job:
    """A concept is encoded by a model when some component's best label is that concept with an alignment
    of at least `min_alignment`; `matched_share_*` counts components with a counterpart of cosine >= `match_cosine`."""
    visible = visible_runs(lake, LENS_JOB)
    runs = []
    for model in (model_a, model_b):
        if f"model={model}" not in visible:
            raise InputError(f"no published semantic-lens run for model {model!r}")
        runs.append(visible[f"model={model}"])
    foundations = {(m["params"]["lens"]["foundation"], m["params"]["lens"]["foundation_weights"]) for m in runs}
    if len(foundations) != 1:
        raise InputError("the two models were projected with different foundation models; their spaces differ")
    files = [output_files(m, "components") for m in runs]
    params = {"model_a": model_a, "model_b": model_b, "min_alignment": min_alignment, "match_cosine": match_cosine}

    def compute(run: Run) -> None:
        a, b = (pa.concat_tables([lake.read_table(f.path) for f in model_files]) for model_files in files)
        run.write_table("model_comparisons", compare_components(model_a, a, model_b, b, min_alignment, match_cosine))

    return Job(JOB, f"models={model_a}__{model_b}", params, files[0] + files[1], compute, uses_ray=False,
               outputs={"model_comparisons": COMPARISONS_SCHEMA})


def run_compare_models(lake: Lake, model_a: str, model_b: str, min_alignment: float = 0.02,
                       match_cosine: float = 0.9, force: bool = False,
                       config: LakelensConfig | None = None) -> dict[str, Any]:
    job = plan_compare_models(lake, model_a, model_b, min_alignment, match_cosine)
    return run_job(lake, job, config or LakelensConfig(), force)

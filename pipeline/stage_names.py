"""The stages' names in order, with no imports: the CLI (`retry --from-stage`, `--help`) and the failure report
need them without loading the stages (torch and the maths take seconds to import). pipeline.runner checks at import
that its stages carry exactly these names, in this order."""
from __future__ import annotations

# stages that checkpoint into <state>/jobs/<job>/stages/<name>/; `hotmesh retry --from-stage` accepts these
CHECKPOINTED_STAGES: tuple[str, ...] = ("ingest", "cameras", "masks", "geometry", "refine", "texture", "report")
# the last step: copying the results into the outbox (no checkpoint: it runs whenever a job ends)
PUBLISH = "publish"
STAGE_NAMES: tuple[str, ...] = CHECKPOINTED_STAGES + (PUBLISH,)

# each stage's share of a job's progress bar (publishing included); the runner maps a stage's own 0..1 progress
# into its span, and the CLI maps the job's percentage back to the stage's (see stage_span)
STAGE_WEIGHTS: dict[str, float] = {"ingest": 5, "cameras": 10, "masks": 5, "geometry": 45, "refine": 25,
                                   "texture": 15, "report": 15, PUBLISH: 5}


def stage_span(name: str) -> tuple[float, float]:
    """The part of the job's 0..100 % progress that stage ``name`` fills: (start, end). KeyError if unknown."""
    total = sum(STAGE_WEIGHTS[s] for s in STAGE_NAMES)
    start = sum(STAGE_WEIGHTS[s] for s in STAGE_NAMES[:STAGE_NAMES.index(name)])
    return 100.0 * start / total, 100.0 * (start + STAGE_WEIGHTS[name]) / total

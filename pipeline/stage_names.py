"""The stages' names in order, with no imports: the CLI (`retry --from-stage`, `--help`) and the failure report
need them without loading the stages (torch and the maths take seconds to import). pipeline.runner checks at import
that its stages carry exactly these names, in this order."""
from __future__ import annotations

# stages that checkpoint into <state>/jobs/<job>/stages/<name>/; `hotmesh retry --from-stage` accepts these
CHECKPOINTED_STAGES: tuple[str, ...] = ("ingest", "cameras", "masks", "geometry", "refine", "texture", "report")
# the last step: copying the results into the outbox (no checkpoint: it runs whenever a job ends)
PUBLISH = "publish"
STAGE_NAMES: tuple[str, ...] = CHECKPOINTED_STAGES + (PUBLISH,)

#!/usr/bin/env bash
# Issue 8, session 6: run-to-run spread of spot_render's held-out PSNR (the borderline target) with the final
# defaults: three whole jobs in one call (the first also builds nvdiffrast, so its times are not comparable).
#   bash bench/device_final8.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/node_modules
#                                   .carry/data/spot_render)
source bench/device_setup.sh
t0=$(date +%s)
for i in 1 2 3; do
    python bench/run_bench.py --sets .carry/data/spot_render --tag spread-spot_render-run$i-$CARD --out "$OUT" \
        > "$OUT/spread-run$i.log" 2>&1
    echo "run $i rc=$? $(( $(date +%s) - t0 ))s"
done
python - "$OUT" "$CARD" <<'PY'
import json, sys
from pathlib import Path
out, card = Path(sys.argv[1]), sys.argv[2]
rows = []
for i in (1, 2, 3):
    r = json.loads((out / f"spread-spot_render-run{i}-{card}.json").read_text())["results"][0]
    rows.append({k: r.get(k) for k in ("heldout_psnr", "heldout_psnr_frame", "heldout_iou", "fscore@0.2%",
                                       "chamfer_l1_rel")} | {"geometry_s": r["stage_seconds"]["geometry"]
                                                             + r["stage_seconds"]["refine"],
                                                             "job_s": r["wall_seconds"]})
    print(i, rows[-1])
(out / f"spread-spot_render-{card}.json").write_text(json.dumps({"card": card, "runs": rows}, indent=1))
PY
echo "all done $(( $(date +%s) - t0 ))s"

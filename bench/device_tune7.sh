#!/usr/bin/env bash
# Session 5 trial: photo-consistency carving of the hull (tools/photocarve.py) on the helmet (cavity seen
# through the neck) and spot (must not lose anything), whole-sphere sets, 192^3.
#   bash bench/device_tune7.sh   (carry .carry/wheels .carry/pymeshlab-cp312.tar.xz .carry/evalsets_sphere/{helmet,spot})
source bench/device_setup.sh
for s in helmet spot; do
  python tools/photocarve_trial.py .carry/evalsets_sphere/$s 192 cuda 0.15:4 0.25:4 0.35:6 2>&1 | grep -v -i warn | tee -a "$OUT/photocarve.log"
done

#!/usr/bin/env bash
# The GPU run used for the Stagetool demo models: on a machine with a CUDA torch (python3) but without the
# project's pure-Python dependencies, install them from wheels in .whl/ (platformdirs, zarr, numcodecs, donfig,
# google-crc32c, openpyxl, et-xmlfile), train with bench/train_stagetool_demo.sh within TRAIN_LIMIT_S seconds and
# pack the model folders and logs into a few archives under $OUT.
#   MINUTES=1.8 TRAIN_LIMIT_S=235 OUT=/tmp/out bash bench/gpu_session.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
export PYTHON=python3 PYTHONUNBUFFERED=1
W=/tmp/stagetool-gpu
mkdir -p "$W"
timeout "${TRAIN_LIMIT_S:-470}" bash bench/train_stagetool_demo.sh "$W" cuda "${MINUTES:-3.3}" 2>&1 | tee "$W/run.log" | tail -n 40
[ -d "$W/models" ] && for m in "$W"/models/*; do tar czf "$OUT/$(basename "$m").tgz" -C "$W/models" "$(basename "$m")"; done
tar czf "$OUT/results.tgz" -C "$W" --exclude ./models .
ls -la "$OUT"

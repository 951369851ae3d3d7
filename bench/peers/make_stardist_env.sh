#!/usr/bin/env bash
# StarDist's own virtual environment (stardist + tensorflow-cpu are not app dependencies), then the peer run.
#   bash bench/peers/make_stardist_env.sh [--budget-s S]   (default budget: the Kaizen card's training seconds)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv-stardist"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "stardist==0.9.2" "tensorflow-cpu>=2.15" tifffile
fi
"$venv/bin/python" "$here/stardist_peer.py" --out "$repo/bench/out/stardist" "$@"
echo "now: python bench/kaizen.py --groups-only --peer bench/out/stardist"

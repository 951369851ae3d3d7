#!/usr/bin/env bash
# Build the Stagescope installer on Linux from a clean virtual environment:
#   fresh venv (build/venv-VARIANT) -> pip install .[package] -> PyInstaller one-folder app
#   (dist/VARIANT/Stagescope) -> .desktop entry + icon + install.sh -> dist/Stagescope-VERSION-linux-ARCH[-cpu].tar.gz
#   -> --version and --self-test of the built app.  Prints the time taken and the sizes.
#
# Usage: packaging/build.sh [--cpu-only] [--keep-venv] [--no-tarball] [--no-self-test]
#   --cpu-only    CPU-only bundle: CPU torch + torchvision wheels when both are available (a pip
#                 find-links folder holding torch-*+cpu and torchvision-*+cpu wheels, or
#                 TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu on a machine with internet);
#                 otherwise the CUDA torch with the CUDA libraries it loads only on demand left out.
#   --keep-venv   reuse build/venv-VARIANT if it exists (quicker rebuilds; the default is a fresh one)
# Environment: PYTHON (default python3, 3.10+), TORCH_CPU_INDEX (see above).
set -euo pipefail

CPU_ONLY=0 KEEP_VENV=0 TARBALL=1 SELF_TEST=1
for arg in "$@"; do
    case "$arg" in
        --cpu-only) CPU_ONLY=1 ;;
        --keep-venv) KEEP_VENV=1 ;;
        --no-tarball) TARBALL=0 ;;
        --no-self-test) SELF_TEST=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VARIANT=$([ "$CPU_ONLY" = 1 ] && echo cpu || echo cuda)
VENV="build/venv-$VARIANT"
WORK="build/pyinstaller-$VARIANT"
DIST="dist/$VARIANT"
LOGS="build/logs"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' app/__init__.py)"
NAME="Stagescope-$VERSION-linux-$(uname -m)$([ "$CPU_ONLY" = 1 ] && echo -cpu || true)"
mkdir -p "$LOGS" build dist
started=$SECONDS
step() { echo "[$(( SECONDS - started ))s] $*"; }

# ------------------------------------------------------------------ torch choice for --cpu-only
cpu_wheel() {  # the newest local wheel of $1 with a +cpu tag for this Python, from pip's find-links
    local tag links dir
    tag="cp$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    links="${PIP_FIND_LINKS:-} $("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)"
    for dir in $links; do
        dir="${dir#file://}"
        [ -d "$dir" ] && ls "$dir"/"$1"-*+cpu-"$tag"-*.whl 2>/dev/null || true
    done | sort -V | tail -n 1
}

TORCH_SPEC=()   # extra requirements for pip; empty = torch as pyproject.toml resolves it (CUDA on Linux)
PRUNE=0
if [ "$CPU_ONLY" = 1 ]; then
    torch_cpu="$(cpu_wheel torch)"; vision_cpu="$(cpu_wheel torchvision)"
    if [ -n "${TORCH_CPU_INDEX:-}" ]; then
        TORCH_SPEC=(--index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple)
        step "CPU-only: torch and torchvision from $TORCH_CPU_INDEX"
    elif [ -n "$torch_cpu" ] && [ -n "$vision_cpu" ]; then
        TORCH_SPEC=("$torch_cpu" "$vision_cpu")
        step "CPU-only: local CPU wheels $(basename "$torch_cpu"), $(basename "$vision_cpu")"
    else
        PRUNE=1
        step "CPU-only: no CPU torch + torchvision wheel pair here (torch: ${torch_cpu:-none}, torchvision: ${vision_cpu:-none});"
        step "          building from the CUDA torch and leaving out the CUDA libraries it loads on demand"
    fi
fi

# ------------------------------------------------------------------ clean venv
if [ "$KEEP_VENV" = 1 ] && [ -x "$VENV/bin/pyinstaller" ]; then
    step "reusing $VENV (installing what pyproject.toml added since; log: $LOGS/pip-$VARIANT.log)"
    : >"$LOGS/pip-$VARIANT.log"
else
    step "creating a clean $VENV with $("$PYTHON" --version) (log: $LOGS/pip-$VARIANT.log)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >"$LOGS/pip-$VARIANT.log" 2>&1
fi
# non-editable: the bundle is built from this checkout (the spec puts it first on the path); a kept
# venv gets new dependencies too (a reader added to pyproject.toml was missing from the bundle)
"$VENV/bin/python" -m pip install "${TORCH_SPEC[@]}" ".[package]" >>"$LOGS/pip-$VARIANT.log" 2>&1 \
    || { tail -n 20 "$LOGS/pip-$VARIANT.log" >&2; exit 1; }
"$VENV/bin/python" - <<'PY'
import torch, torchvision
boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # torchvision's compiled ops load with this torch
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: ops load")
PY

# ------------------------------------------------------------------ PyInstaller
step "PyInstaller (log: $LOGS/pyinstaller-$VARIANT.log)"
rm -rf "$DIST"
QT_QPA_PLATFORM=offscreen STAGESCOPE_CPU_ONLY=$CPU_ONLY STAGESCOPE_PRUNE_CUDA=$PRUNE \
    nice -n 10 "$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/stagescope.spec >"$LOGS/pyinstaller-$VARIANT.log" 2>&1 \
    || { tail -n 30 "$LOGS/pyinstaller-$VARIANT.log" >&2; exit 1; }
APP="$DIST/Stagescope"
step "built $APP ($(du -sh "$APP" | cut -f1))"

# ------------------------------------------------------------------ Qt's window plugin (xcb)
# PyInstaller bundles the libraries Qt's xcb plugin links when it finds them where it builds; those
# it did not find must be on each user's machine, else no window opens (packaging/README.md)
xcb_plugin="$APP/_internal/PySide6/Qt/plugins/platforms/libqxcb.so"
if [ -f "$xcb_plugin" ] && command -v ldd >/dev/null; then
    xcb_missing="$(LD_LIBRARY_PATH="$APP/_internal:$APP/_internal/PySide6/Qt/lib" ldd "$xcb_plugin" \
                   | awk '/not found/ { print $1 }' | sort -u | tr '\n' ' ')"
    if [ -n "$xcb_missing" ]; then
        step "note: not bundled, so each user's machine needs them for the window: $xcb_missing"
        step "      (Debian/Ubuntu package names in packaging/README.md; install them here and rebuild to bundle them)"
    fi
fi

# ------------------------------------------------------------------ check the built app
if [ "$SELF_TEST" = 1 ]; then
    step "checking the built app (--version, --self-test)"
    scratch="$(mktemp -d)"
    STAGESCOPE_DATA_DIR="$scratch/data" STAGESCOPE_CONFIG_DIR="$scratch/config" "$APP/Stagescope" --version
    STAGESCOPE_DATA_DIR="$scratch/data" STAGESCOPE_CONFIG_DIR="$scratch/config" "$APP/Stagescope" --self-test \
        || { echo "build.sh: the built app's self-test failed" >&2; exit 1; }
    rm -rf "$scratch"
fi

# ------------------------------------------------------------------ desktop entry + tarball
if [ "$TARBALL" = 1 ]; then
    TAR="dist/$NAME.tar.gz"
    step "tarball $TAR (app, stagescope.desktop, icon, install.sh)"
    tar -czf "$TAR" --owner=0 --group=0 --transform "s,^,$NAME/," \
        -C "$DIST" Stagescope \
        -C "$ROOT/packaging" stagescope.desktop install.sh \
        -C "$ROOT/resources" stagescope.png
fi

# ------------------------------------------------------------------ sizes
step "done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
echo "sizes ($VARIANT):"
echo "  app folder  $(du -sh "$APP" | cut -f1)  $APP"
[ "$TARBALL" = 1 ] && echo "  tarball     $(du -sh "dist/$NAME.tar.gz" | cut -f1)  dist/$NAME.tar.gz"
echo "largest parts of the app folder:"
( cd "$APP/_internal" && du -s -- * | sort -rn | awk 'NR <= 8 { printf "  %7.0f MB  %s\n", $1 / 1024, $2 }' )

#!/usr/bin/env bash
# Install a built tarball as a new user would and look at the first window, on a virtual display.
#   packaging/try_install.sh dist/Stagescope-VERSION-linux-x86_64[-cpu].tar.gz [screenshot.png]
# A fresh HOME (temporary folder) -> ./install.sh -> the menu entry (~/.local/share/applications)
# -> its Exec line started under xvfb-run -> waits for the main window -> screenshot (ImageMagick's
# `import`) -> ./install.sh --uninstall.  Needs: xvfb (xvfb-run), x11-utils (xwininfo), imagemagick.
set -euo pipefail
tarball="$(realpath "$1")"
shot="$(realpath -m "${2:-stagescope-installed.png}")"
scratch="$(mktemp -d)"
export HOME="$scratch/home"
unset XDG_DATA_HOME XDG_CONFIG_HOME STAGESCOPE_DATA_DIR STAGESCOPE_CONFIG_DIR STAGESCOPE_DOCUMENTS_DIR
mkdir -p "$HOME"
tar -xzf "$tarball" -C "$scratch"
"$scratch"/Stagescope-*/install.sh
entry="$HOME/.local/share/applications/stagescope.desktop"
[ -f "$entry" ] || { echo "try_install: no menu entry at $entry" >&2; exit 1; }
command -v desktop-file-validate >/dev/null && desktop-file-validate "$entry"
exec_line="$(sed -n 's/^Exec=//p' "$entry")"
echo "menu entry: $entry"
echo "Exec=$exec_line"
# the window: started from the entry's Exec line, as the desktop would; screenshot once it is drawn
SHOT="$shot" EXEC_LINE="$exec_line" xvfb-run -a -s "-screen 0 1440x900x24" bash -c '
    eval "$EXEC_LINE" > "$HOME/app.log" 2>&1 &
    app=$!
    for _ in $(seq 1 120); do
        xwininfo -root -tree 2>/dev/null | grep -q "\"Stagescope" && break
        kill -0 "$app" 2>/dev/null || { cat "$HOME/app.log" >&2; exit 1; }
        sleep 1
    done
    sleep 8  # the sample project opens and its first image is drawn
    xwininfo -root -tree | grep "\"Stagescope" | head -n 3
    import -window root "$SHOT"
    kill "$app"; wait "$app" 2>/dev/null || true
    tail -n 5 "$HOME/app.log"
'
echo "screenshot: $shot"
ls "$HOME/Documents/Stagescope" 2>/dev/null | sed 's/^/sample copied to Documents\/Stagescope: /'
"$scratch"/Stagescope-*/install.sh --uninstall
[ ! -e "$entry" ] && [ ! -e "$HOME/.local/opt/stagescope" ] && echo "uninstall removed the app and its menu entry"
rm -rf "$scratch"

#!/bin/sh
# Install Stagescope from this unpacked tarball: for you (default, no root needed) or for everyone.
#   ./install.sh            -> ~/.local/opt/stagescope, menu entry and `stagescope` in ~/.local/bin
#   sudo ./install.sh --system  -> /opt/stagescope, menu entry for all users, /usr/local/bin/stagescope
#   ./install.sh --uninstall [--system]
# The app never writes inside its install folder: projects go to ~/Documents/Stagescope, data to
# ~/.local/share/Stagescope, settings to ~/.config/Stagescope.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
system=0 uninstall=0
for arg in "$@"; do
    case "$arg" in
        --system) system=1 ;;
        --uninstall) uninstall=1 ;;
        *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
if [ "$system" = 1 ]; then
    dest=/opt/stagescope; share=/usr/local/share; bin=/usr/local/bin
else
    dest="$HOME/.local/opt/stagescope"; share="${XDG_DATA_HOME:-$HOME/.local/share}"; bin="$HOME/.local/bin"
fi
desktop="$share/applications/stagescope.desktop"
icon="$share/icons/hicolor/256x256/apps/stagescope.png"
if [ "$uninstall" = 1 ]; then
    rm -rf "$dest" "$desktop" "$icon" "$bin/stagescope"
    echo "Stagescope removed (your projects and settings were left in place)"
    exit 0
fi
rm -rf "$dest.new"
mkdir -p "$(dirname "$dest")" "$share/applications" "$(dirname "$icon")" "$bin"
cp -R "$here/Stagescope" "$dest.new"
rm -rf "$dest"
mv "$dest.new" "$dest"
cp "$here/stagescope.png" "$icon"
sed "s|@EXEC@|\"$dest/Stagescope\"|" "$here/stagescope.desktop" > "$desktop"
chmod 644 "$desktop" "$icon"
ln -sf "$dest/Stagescope" "$bin/stagescope"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$share/applications" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q "$share/icons/hicolor" 2>/dev/null || true
echo "Stagescope installed in $dest"
echo "Start it from the applications menu, or run: $bin/stagescope"
echo "Check the install with: $bin/stagescope --self-test"

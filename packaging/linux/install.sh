#!/bin/sh
# Install the LungLens bundle offline (this folder = the unpacked lunglens-*.tar.gz).
#   sudo ./install.sh            -> /opt/lunglens, /usr/local/bin/lunglens, menu entry for all users
#   ./install.sh                 -> ~/.local/opt/lunglens, ~/.local/bin/lunglens, menu entry for you
#   ./install.sh --prefix DIR    -> DIR/lunglens (menu entry as above)
# Then runs 'lunglens selftest'. No network access is needed or used.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" = 0 ]; then
  prefix=/opt; bindir=/usr/local/bin; share=/usr/share
else
  prefix="$HOME/.local/opt"; bindir="$HOME/.local/bin"; share="${XDG_DATA_HOME:-$HOME/.local/share}"
fi
if [ "${1:-}" = "--prefix" ] && [ -n "${2:-}" ]; then prefix=$2; fi
dest="$prefix/lunglens"

mkdir -p "$prefix" "$bindir" "$share/applications" \
         "$share/icons/hicolor/256x256/apps" "$share/icons/hicolor/scalable/apps"
if [ "$here" != "$dest" ]; then
  rm -rf "$dest.new"
  cp -a "$here" "$dest.new"
  rm -rf "$dest"
  mv "$dest.new" "$dest"
fi
ln -sf "$dest/lunglens" "$bindir/lunglens"
sed "s|^Exec=lunglens|Exec=$dest/lunglens|; s|^TryExec=lunglens|TryExec=$dest/lunglens|" \
    "$dest/share/applications/lunglens.desktop" > "$share/applications/lunglens.desktop"
cp "$dest/share/icons/hicolor/256x256/apps/lunglens.png" "$share/icons/hicolor/256x256/apps/"
cp "$dest/share/icons/hicolor/scalable/apps/lunglens.svg" "$share/icons/hicolor/scalable/apps/"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$share/applications" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q "$share/icons/hicolor" || true

echo "installed LungLens in $dest (command: $bindir/lunglens)"
QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen} "$dest/lunglens" selftest

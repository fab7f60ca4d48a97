#!/bin/sh
# Remove what install.sh installed (same user / root as the install). User data
# (~/.local/share/LungLens, audit log) is kept.
set -eu
if [ "$(id -u)" = 0 ]; then
  prefix=/opt; bindir=/usr/local/bin; share=/usr/share
else
  prefix="$HOME/.local/opt"; bindir="$HOME/.local/bin"; share="${XDG_DATA_HOME:-$HOME/.local/share}"
fi
if [ "${1:-}" = "--prefix" ] && [ -n "${2:-}" ]; then prefix=$2; fi
rm -f "$bindir/lunglens" "$share/applications/lunglens.desktop" \
      "$share/icons/hicolor/256x256/apps/lunglens.png" "$share/icons/hicolor/scalable/apps/lunglens.svg"
rm -rf "$prefix/lunglens"
echo "removed LungLens from $prefix/lunglens"

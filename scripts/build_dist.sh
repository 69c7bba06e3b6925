#!/usr/bin/env bash
# `make dist`: freeze AnomalyDesk with PyInstaller (installers/anomalydesk.spec, onedir) and package it.
# Linux: dist/anomalydesk_<version>_amd64.deb and dist/anomalydesk-<version>-linux-x86_64.tar.gz.
# The version is read from pyproject.toml ([project] version), the only place it lives.
# Environment: PYTHON (default .venv/bin/python), DEB_ZSTD_LEVEL (default 9).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
VERSION="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
INSTALLED="$("$PY" -c 'import importlib.metadata as m; print(m.version("anomalydesk"))')"
if [ "$VERSION" != "$INSTALLED" ]; then
  echo "build_dist: pyproject.toml says $VERSION but the installed anomalydesk is $INSTALLED;" \
       "run \`make setup\` (or pip install -e .) so the bundled metadata matches" >&2
  exit 1
fi
ARCH="$(uname -m)"
[ "$(uname -s)" = Linux ] || { echo "build_dist: Linux only (see docs/installers.md for Windows/macOS)" >&2; exit 1; }
[ "$ARCH" = x86_64 ] || { echo "build_dist: the .deb recipe is for amd64, this is $ARCH" >&2; exit 1; }

start=$(date +%s)
echo "build_dist: freezing anomalydesk $VERSION with PyInstaller" >&2
rm -rf dist/anomalydesk
"$PY" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
  installers/anomalydesk.spec
BUNDLE=dist/anomalydesk
"$BUNDLE/anomalydesk" --version | grep -qx "anomalydesk $VERSION" || {
  echo "build_dist: the frozen app does not report version $VERSION: $("$BUNDLE/anomalydesk" --version)" >&2; exit 1; }
frozen=$(date +%s)

# --- the portable tarball -----------------------------------------------------------------------------
TARBALL="dist/anomalydesk-$VERSION-linux-$ARCH.tar.gz"
tar -C dist --owner=0 --group=0 -czf "$TARBALL" anomalydesk

# --- the Debian package -------------------------------------------------------------------------------
ROOT=build/deb/root
rm -rf build/deb
mkdir -p "$ROOT/DEBIAN" "$ROOT/opt" "$ROOT/usr/bin" "$ROOT/usr/share/applications" \
  "$ROOT/usr/share/icons/hicolor/256x256/apps" "$ROOT/usr/share/icons/hicolor/scalable/apps" \
  "$ROOT/usr/share/doc/anomalydesk"
cp -a "$BUNDLE" "$ROOT/opt/anomalydesk"
ln -s /opt/anomalydesk/anomalydesk "$ROOT/usr/bin/anomalydesk"
install -m 644 installers/linux/anomalydesk.desktop "$ROOT/usr/share/applications/anomalydesk.desktop"
install -m 644 resources/anomalydesk.png "$ROOT/usr/share/icons/hicolor/256x256/apps/anomalydesk.png"
install -m 644 resources/anomalydesk.svg "$ROOT/usr/share/icons/hicolor/scalable/apps/anomalydesk.svg"
printf 'AnomalyDesk %s\nLicense: MIT\n' "$VERSION" > "$ROOT/usr/share/doc/anomalydesk/copyright"
desktop-file-validate "$ROOT/usr/share/applications/anomalydesk.desktop"
SIZE_KB=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_SIZE@/$SIZE_KB/" installers/linux/debian/control.in \
  > "$ROOT/DEBIAN/control"
install -m 755 installers/linux/debian/postinst installers/linux/debian/postrm "$ROOT/DEBIAN/"
chmod -R u+rwX,go+rX,go-w "$ROOT"
DEB="dist/anomalydesk_${VERSION}_amd64.deb"
# zstd -9: ~30 s here where -Zxz -z1 took ~220 s (and default xz longer), for a
# package ~6 % larger; dpkg >= 1.21.18 (Debian 12, Ubuntu >= 21.10) reads it
dpkg-deb --root-owner-group -Zzstd -z"${DEB_ZSTD_LEVEL:-9}" --build "$ROOT" "$DEB" >&2
end=$(date +%s)

echo "build_dist: $(du -sh "$BUNDLE" | cut -f1) bundle, frozen in $((frozen - start)) s, packaged in $((end - frozen)) s" >&2
ls -l "$DEB" "$TARBALL" >&2

#!/usr/bin/env bash
# macOS recipe: AnomalyDesk.app (PyInstaller BUNDLE from installers/anomalydesk.spec) in a compressed .dmg
# with an /Applications link. Run from anywhere on a Mac with the project installed in $PYTHON
# (default: python3) together with PyInstaller; needs the system tools sips, iconutil and hdiutil.
# Output: dist/AnomalyDesk.app and dist/AnomalyDesk-<version>-macos-<arch>.dmg
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -s)" = Darwin ] || { echo "build_dmg: macOS only" >&2; exit 1; }

PY="${PYTHON:-python3}"
VERSION="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
ARCH="$(uname -m)"

# the .icns, from the committed 256 px PNG (iconutil wants an .iconset of fixed sizes)
ICONSET=build/anomalydesk.iconset
rm -rf "$ICONSET" && mkdir -p "$ICONSET"
for size in 16 32 128 256; do
  sips -z "$size" "$size" resources/anomalydesk.png --out "$ICONSET/icon_${size}x${size}.png" >/dev/null
done
for size in 16 32 128; do
  double=$((size * 2))
  sips -z "$double" "$double" resources/anomalydesk.png --out "$ICONSET/icon_${size}x${size}@2x.png" >/dev/null
done
iconutil -c icns "$ICONSET" -o resources/anomalydesk.icns

rm -rf dist/AnomalyDesk.app dist/anomalydesk
ANOMALYDESK_VERSION="$VERSION" "$PY" -m PyInstaller --noconfirm --log-level WARN --distpath dist \
  --workpath build/pyinstaller installers/anomalydesk.spec
APP=dist/AnomalyDesk.app
reported="$("$APP/Contents/MacOS/anomalydesk" --version)"
[ "$reported" = "anomalydesk $VERSION" ] || { echo "build_dmg: the app reports '$reported'" >&2; exit 1; }

STAGE=build/dmg
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
DMG="dist/AnomalyDesk-$VERSION-macos-$ARCH.dmg"
rm -f "$DMG"
hdiutil create -volname "AnomalyDesk $VERSION" -srcfolder "$STAGE" -ov -format UDZO "$DMG"
ls -l "$DMG"

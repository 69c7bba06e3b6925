"""`app.model.window_lengths` and the live plot's gaps across a window-length change (no Qt, no Redis)."""

from __future__ import annotations

import numpy as np

from anomalydesk.app.model.window_lengths import WindowLengths
from anomalydesk.app.widgets.live_panel import with_gaps


def test_history_read_after_newer_live_windows_still_shows_its_changes() -> None:
    """A backfill's reload clears the lengths, and live windows keep arriving while the history is read:
    a newer window noted first hid every older change (the mark vanished, old gaps were judged at 10 s)."""
    lengths = WindowLengths()
    lengths.note([(1100.0, 10)])  # live, during the read
    lengths.note([(s, 5) for s in range(900, 1000, 5)] + [(s, 10) for s in range(1000, 1100, 10)])
    assert lengths.changes() == [(1000.0, 5, 10)]
    assert list(lengths.at(np.array([900.0, 995.0, 1000.0, 1100.0, 1200.0]))) == [5, 5, 10, 10, 10]
    lengths.note([(1100.0, 10), (995.0, 5), (1200.0, None)])  # repeats, and a window without a length
    assert lengths.changes() == [(1000.0, 5, 10)]
    lengths.note([(1110.0, 30), (800.0, 5)])
    assert lengths.changes() == [(1000.0, 5, 10), (1110.0, 10, 30)]
    assert list(lengths.at(np.array([700.0]))) == [5]  # before the first run: its length
    assert WindowLengths().at(np.array([1.0])) is None


def test_the_first_longer_window_is_no_gap_wherever_the_old_windows_ended() -> None:
    """5 s → 10 s: the first 10-s window begins at the next multiple of 10 s, so after a last 5-s window
    at …100 (ending …105) it begins at …110 — a 10-s step from a 5-s window, which read as a gap."""
    for last_old in (100.0, 105.0):
        starts = [*np.arange(50.0, last_old + 1, 5.0), *np.arange(np.ceil((last_old + 5) / 10) * 10, 200.0, 10.0)]
        rows = np.column_stack([starts, np.ones(len(starts))])
        lengths = np.where(np.asarray(starts) <= last_old, 5.0, 10.0)
        assert np.isfinite(with_gaps(rows, lengths)[:, 1]).all(), last_old
    # a real gap across the change still is one
    starts = [*np.arange(50.0, 101, 5.0), *np.arange(300.0, 400.0, 10.0)]
    rows = np.column_stack([starts, np.ones(len(starts))])
    drawn = with_gaps(rows, np.where(np.asarray(starts) <= 100, 5.0, 10.0))
    assert np.isnan(drawn[:, 1]).sum() == 1 and drawn[np.isnan(drawn[:, 1]), 0][0] == 105.0

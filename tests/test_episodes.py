"""k-of-n confirmation and cooldown: the step()-able tracker and the whole-array helper agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalydesk.detect.episodes import EpisodeTracker, track


def _flags(text: str) -> np.ndarray:
    return np.array([c == "1" for c in text], dtype=bool)


def test_single_blip_never_opens() -> None:
    inside, episodes = track(_flags("0001000001000"), k=2, n=3, cooldown=3)
    assert episodes == [] and not inside.any()


def test_open_extend_resolve() -> None:
    tracker = EpisodeTracker(k=2, n=3, cooldown=3)
    steps = [tracker.step(f) for f in _flags("0101100001")]
    assert [i for i, s in enumerate(steps) if s.opened] == [3]
    opened = steps[3].episode
    assert opened is not None and opened.start == 1  # starts at the first confirming window
    assert steps[4].extended and not steps[5].resolved and not steps[6].resolved
    assert steps[7].resolved and steps[7].episode is opened and opened.end == 4 and opened.resolved_at == 7
    assert not steps[9].opened  # a lone anomalous window after resolution: not yet


def test_gap_shorter_than_cooldown_keeps_one_incident() -> None:
    inside, episodes = track(_flags("0110011000"), k=2, n=3, cooldown=3)
    assert len(episodes) == 1 and (episodes[0].start, episodes[0].end) == (1, 6)
    assert inside.tolist() == [False] + [True] * 6 + [False] * 3


def test_open_at_end_of_series_is_counted() -> None:
    inside, episodes = track(_flags("00000011"), k=2, n=3, cooldown=3)
    assert len(episodes) == 1 and episodes[0].resolved_at is None and inside[-2:].all()


def test_whole_array_matches_stepping() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        flags = rng.random(150) < rng.random() * 0.4
        k = int(rng.integers(1, 4))
        n = int(rng.integers(k, 6))
        cooldown = int(rng.integers(1, 5))
        inside, episodes = track(flags, k, n, cooldown)
        tracker = EpisodeTracker(k, n, cooldown)
        stepped = [s.episode for s in (tracker.step(bool(f)) for f in flags) if s.opened]
        assert [(e.start, e.end, e.resolved_at) for e in episodes] == \
            [(e.start, e.end, e.resolved_at) for e in stepped]
        expected = np.zeros_like(flags)
        for e in stepped:
            expected[e.start:e.end + 1] = True
        assert np.array_equal(inside, expected)


def test_state_round_trip_continues_identically() -> None:
    flags = _flags("01101000110111000")
    whole = EpisodeTracker(2, 3, 2)
    expected = [whole.step(bool(f)) for f in flags]
    resumed = EpisodeTracker(2, 3, 2)
    got = []
    for f in flags:
        resumed = EpisodeTracker.from_state(json.loads(json.dumps(resumed.state())))
        got.append(resumed.step(bool(f)))
    assert [(s.opened, s.extended, s.resolved) for s in got] == [(s.opened, s.extended, s.resolved) for s in expected]


def test_explicit_window_indices_with_gaps() -> None:
    tracker = EpisodeTracker(k=2, n=3, cooldown=2)
    assert not tracker.step(True, 100).opened
    assert not tracker.step(True, 105).opened  # 100 is no longer among the last 3 windows
    assert tracker.step(True, 106).opened


@pytest.mark.parametrize(("k", "n", "cooldown"), [(0, 3, 1), (4, 3, 1), (1, 1, 0)])
def test_bad_parameters_refused(k: int, n: int, cooldown: int) -> None:
    with pytest.raises(ValueError, match=r"k <= n|cooldown"):
        EpisodeTracker(k, n, cooldown)

"""k-of-n confirmation, its opening margin and the cooldown: the step()-able tracker and the whole-array
helpers agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalydesk import config
from anomalydesk.detect.episodes import EpisodeTracker, track, track_scores


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
        strong = flags & (rng.random(150) < rng.random())
        k = int(rng.integers(1, 4))
        n = int(rng.integers(k, 6))
        cooldown = int(rng.integers(1, 5))
        inside, episodes = track(flags, k, n, cooldown, strong=strong)
        tracker = EpisodeTracker(k, n, cooldown)
        steps = (tracker.step(bool(f), strong=bool(g)) for f, g in zip(flags, strong, strict=True))
        stepped = [s.episode for s in steps if s.opened]
        assert [(e.start, e.end, e.resolved_at, e.confirmed) for e in episodes] == \
            [(e.start, e.end, e.resolved_at, e.confirmed) for e in stepped]
        expected = np.zeros_like(flags)
        for e in stepped:
            expected[e.start:e.end + 1] = True
        assert np.array_equal(inside, expected)


def test_state_round_trip_continues_identically() -> None:
    flags = _flags("01101000110111000")
    strong = _flags("00100000000001000")
    whole = EpisodeTracker(2, 3, 2)
    expected = [whole.step(bool(f), strong=bool(g)) for f, g in zip(flags, strong, strict=True)]
    assert [i for i, s in enumerate(expected) if s.opened] == [2, 13]  # 8–9 alone: no strong window
    resumed = EpisodeTracker(2, 3, 2)
    got = []
    for f, g in zip(flags, strong, strict=True):
        resumed = EpisodeTracker.from_state(json.loads(json.dumps(resumed.state())))
        got.append(resumed.step(bool(f), strong=bool(g)))
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


def test_windows_only_just_past_the_threshold_open_nothing_by_themselves() -> None:
    """Hysteresis: two of three windows at 70–71 open no incident; one of them at the opening score
    does, and once open, every window at or above 70 extends it."""
    just = config.INCIDENT_OPEN_SCORE - 1.0
    scores = np.array([30, 70.0, just, 40, just, 70.0, 35, 40, 36, 38, 39])
    inside, episodes = track_scores(scores)
    assert episodes == [] and not inside.any()
    scores[5] = config.INCIDENT_OPEN_SCORE  # the second window of the pair 4–5 now opens it
    scores[7] = 70.0  # … and a window only just past the threshold extends it
    inside, episodes = track_scores(scores)
    assert [(e.start, e.end, e.confirmed) for e in episodes] == [(4, 7, 5)]
    assert inside.tolist() == [False] * 4 + [True] * 4 + [False] * 3


def test_a_strong_window_opens_when_the_count_is_reached_later() -> None:
    """The strong window need not be the one that completes k of n: it counts while it is among the
    last n."""
    tracker = EpisodeTracker(k=2, n=3, cooldown=3)
    assert not tracker.step(True, 0, strong=True).opened
    step = tracker.step(True, 1, strong=False)
    assert step.opened and step.episode is not None and (step.episode.start, step.episode.confirmed) == (0, 1)
    weak = EpisodeTracker(k=2, n=3, cooldown=3)
    assert not weak.step(True, 0, strong=True).opened
    assert not weak.step(True, 3, strong=False).opened  # the strong window 0 left the last 3


def test_a_state_saved_before_the_margin_keeps_its_windows_strong() -> None:
    """A tracker stored by an older detector has no "strong" list: the windows it already counted keep
    the rule they were counted under, so an upgrade does not swallow an incident being confirmed."""
    state = EpisodeTracker(2, 3, 3).state()
    state.update(index=10, recent=[10])
    del state["strong"]
    tracker = EpisodeTracker.from_state(state)
    assert tracker.step(True, 11, strong=False).opened


def test_strong_must_match_the_flags() -> None:
    with pytest.raises(ValueError, match="strong has 3 windows, flags 4"):
        track(_flags("0110"), strong=_flags("011"))

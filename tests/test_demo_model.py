"""The simulated system behind `anomalydesk demo` (pure: no Redis)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from anomalydesk import config
from anomalydesk.events import normalize_endpoint
from anomalydesk.ingest.demo_model import (
    FAULT_KINDS,
    ORDERS_KPI,
    PAYMENT_KPI,
    PAYMENT_RANGE,
    Fault,
    InjectSpec,
    Simulation,
    check_fault,
    orders_range,
    parse_inject,
)
from anomalydesk.ingest.demo_services import KPI_ENDPOINT, build_services, load_factor, raw_paths, service_names

T0 = 20_782 * 86_400.0  # 2026-11-25 00:00 UTC
W = 5


def generate_all(sim: Simulation, t0: float, t1: float, faults=(), seed: int = 3, rate: float = 400.0):
    return [sim.generate(i, t0, t1, rate, np.random.default_rng([seed, i]), faults) for i in range(len(sim.names))]


# --- --inject -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [
    ("errors@30+20", InjectSpec("errors", 30.0, 20.0, "payments")),
    ("latency@30", InjectSpec("latency", 30.0, 60.0, "payments")),
    ("drop@0+5:users", InjectSpec("drop", 0.0, 5.0, "users")),
    ("new-dependency@1.5m+90s:svc-6", InjectSpec("new-dependency", 90.0, 90.0, "svc-6")),
    ("business@2h+10m:orders", InjectSpec("business", 7200.0, 600.0, "orders")),
])  # fmt: skip
def test_inject_specs_parse(spec: str, expected: InjectSpec) -> None:
    assert parse_inject(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("errors", "expected KIND@START[+LEN][:SERVICE]"),
    ("@30", "expected KIND@START[+LEN][:SERVICE]"),
    ("errors@", "expected KIND@START[+LEN][:SERVICE]"),
    ("oops@30", "unknown fault kind 'oops'"),
    ("errors@-5", "START must be a number of seconds"),
    ("errors@ten", "START must be a number of seconds"),
    ("errors@30+", "LEN must be a number of seconds"),
    ("errors@30+0", "LEN must be more than 0"),
    ("errors@30+5x", "LEN must be a number of seconds"),
    ("errors@30:pay ments", "service must match"),
    ("errors@30:", "service must match"),
])  # fmt: skip
def test_bad_inject_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="--inject") as err:
        parse_inject(spec)
    assert message in str(err.value)
    assert spec in str(err.value)


def test_faults_must_fit_the_demo() -> None:
    names = service_names(5)
    for kind in FAULT_KINDS:
        check_fault(kind, "payments", names)
    with pytest.raises(ValueError, match="business KPIs"):
        check_fault("business", "gateway", names)
    with pytest.raises(ValueError, match="not part of this demo"):
        check_fault("errors", "svc-6", names)
    with pytest.raises(ValueError, match="unknown fault kind"):
        check_fault("meltdown", "payments", names)


# --- services and load ----------------------------------------------------------------------------
def test_service_names() -> None:
    assert service_names(5) == ["gateway", "users", "orders", "payments", "inventory"]
    assert service_names(2) == ["gateway", "users"]
    assert service_names(7)[5:] == ["svc-6", "svc-7"]
    with pytest.raises(ValueError, match="--services"):
        service_names(0)
    with pytest.raises(ValueError, match="--services"):
        service_names(config.DEMO_MAX_SERVICES + 1)


def test_every_endpoint_template_normalises_to_its_name() -> None:
    sim = Simulation(7, W)
    for service in sim.services:
        names = [e.name for e in service.endpoints]
        assert len(set(names)) == len(names), service.name
        assert abs(sum(e.share for e in service.endpoints) - 1.0) < 1e-9, service.name
        assert any("{id}" in n for n in names), f"{service.name} has no parameterised endpoint"
        for name in names:
            assert normalize_endpoint(name) == name


def test_raw_paths_carry_ids_and_are_normalised() -> None:
    rng = np.random.default_rng(1)
    templates = ["GET:/users/{id}", "GET:/payments/{hex}", "DELETE:/orders/{uuid}/items/{id}", "GET:/health"]
    first, second = raw_paths(templates, rng), raw_paths(templates, rng)
    assert first[3] == "GET:/health" and first[:3] != second[:3]  # fresh ids every batch
    assert re.fullmatch(r"GET:/users/\d+", first[0]) and re.fullmatch(r"GET:/payments/[0-9a-f]{16}", first[1])
    assert re.fullmatch(r"DELETE:/orders/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/items/\d+", first[2])
    assert [normalize_endpoint(p) for p in first] == [
        "GET:/users/{id}", "GET:/payments/{id}", "DELETE:/orders/{id}/items/{id}", "GET:/health"]
    sim = Simulation(5, W)
    users = sim.generate(1, T0, T0 + 5, 400.0, np.random.default_rng(1))
    assert set(users.endpoints) == {e.name for e in sim.services[1].endpoints}


def test_daily_load_has_a_24h_period_and_mean_one() -> None:
    t = T0 + np.arange(0, 86_400, 60.0)
    load = np.asarray(load_factor(t))
    assert abs(load.mean() - 1.0) < 1e-6
    assert np.allclose(load, load_factor(t + 86_400))
    hours = (t % 86_400) / 3600
    assert load.max() > 1.35 and load.min() < 0.65
    assert 12 <= hours[np.argmax(load)] <= 18 and hours[np.argmin(load)] <= 6


def test_rate_is_the_mean_over_a_day() -> None:
    sim = Simulation(5, W)
    counts = [len(t) for c in range(0, 86_400, 3600) for t in generate_all(sim, T0 + c, T0 + c + 3600, rate=20)]
    assert sum(counts) == pytest.approx(20 * 86_400, rel=0.01)


def test_latency_rises_with_load() -> None:
    sim = Simulation(5, W)
    night = sim.generate(3, T0 + 3 * 3600, T0 + 4 * 3600, 400.0, np.random.default_rng(1))
    afternoon = sim.generate(3, T0 + 15 * 3600, T0 + 16 * 3600, 400.0, np.random.default_rng(1))
    assert len(afternoon) > 2 * len(night)
    assert np.median(afternoon.latency_ms) > 1.2 * np.median(night.latency_ms)


def test_same_seed_same_traffic() -> None:
    a = generate_all(Simulation(5, W), T0, T0 + 60)
    b = generate_all(Simulation(5, W), T0, T0 + 60)
    c = generate_all(Simulation(5, W), T0, T0 + 60, seed=4)
    for x, y in zip(a, b, strict=True):
        for attr in ("endpoint_idx", "status", "latency_ms", "timestamps"):
            assert np.array_equal(getattr(x, attr), getattr(y, attr))
    assert not np.array_equal(a[0].latency_ms[:100], c[0].latency_ms[:100])


def test_traffic_is_sorted_and_inside_the_interval() -> None:
    for traffic in generate_all(Simulation(5, W), T0 + 2.5, T0 + 33.3):
        assert np.all(np.diff(traffic.timestamps) >= 0)
        assert traffic.timestamps.min() >= T0 + 2.5 and traffic.timestamps.max() < T0 + 33.3
        assert traffic.status.min() >= 200 and traffic.status.max() <= 504


# --- faults on the generated arrays ------------------------------------------------------------------
FAULT_START, FAULT_END = T0 + 600, T0 + 1200


def _split(kind: str, service: str = "payments"):
    """(traffic without, traffic with) the fault over 30 minutes."""
    fault = Fault(kind, service, FAULT_START, FAULT_END)
    clean = generate_all(Simulation(5, W), T0, T0 + 1800)
    faulty = generate_all(Simulation(5, W), T0, T0 + 1800, [fault])
    return clean, faulty, fault


def test_a_fault_changes_only_its_own_service() -> None:
    for kind in FAULT_KINDS:
        clean, faulty, _ = _split(kind)
        for a, b in zip(clean, faulty, strict=True):
            if a.service != "payments":
                assert np.array_equal(a.latency_ms, b.latency_ms) and np.array_equal(a.status, b.status)


def test_errors_fault() -> None:
    _, faulty, fault = _split("errors")
    t = faulty[3]
    inside = fault.mask(t.timestamps)
    rate_in = np.mean(t.status[inside] >= 500)
    rate_out = np.mean(t.status[~inside] >= 500)
    assert 0.17 < rate_in < 0.23 and rate_out < 0.01
    # only successes turn into 5xx: the 4xx share stays
    assert abs(np.mean((t.status[inside] // 100) == 4) - np.mean((t.status[~inside] // 100) == 4)) < 0.01


def test_latency_fault() -> None:
    clean, faulty, fault = _split("latency")
    t = faulty[3]
    inside = fault.mask(t.timestamps)
    ratio = np.median(t.latency_ms[inside]) / np.median(clean[3].latency_ms[fault.mask(clean[3].timestamps)])
    assert 4.5 < ratio < 5.5


def test_shift_fault_is_a_permanent_level_change_with_ground_truth() -> None:
    spec = parse_inject("shift@30:payments")
    assert spec.kind == "shift" and spec.length == float("inf")  # no +LEN: for good
    assert parse_inject("shift@30+600:payments").length == 600.0
    fault = Fault("shift", "payments", T0 + 600, float("inf"))
    assert fault.truth() == {"kind": "shift", "service": "payments", "start": round(T0 + 600, 3), "end": None}
    assert str(fault).startswith("shift on payments from ") and str(fault).endswith(" on")
    clean = generate_all(Simulation(5, W), T0, T0 + 1800)
    faulty = generate_all(Simulation(5, W), T0, T0 + 1800, [fault])
    t, c = faulty[3], clean[3]
    inside, before = fault.mask(t.timestamps), ~fault.mask(t.timestamps)
    ratio = np.median(t.latency_ms[inside]) / np.median(c.latency_ms[fault.mask(c.timestamps)])
    assert 1.4 < ratio < 1.6 and inside[-1]  # still on at the end of the run
    assert np.array_equal(t.latency_ms[before], c.latency_ms[~fault.mask(c.timestamps)])


@pytest.mark.parametrize(("kind", "factor"), [("drop", 0.2), ("spike", 5.0)])
def test_volume_faults(kind: str, factor: float) -> None:
    clean, faulty, fault = _split(kind)
    before = np.count_nonzero(fault.mask(clean[3].timestamps))
    after = np.count_nonzero(fault.mask(faulty[3].timestamps))
    assert after / before == pytest.approx(factor, rel=0.1)
    outside = ~fault.mask(faulty[3].timestamps)
    assert np.count_nonzero(outside) == pytest.approx(np.count_nonzero(~fault.mask(clean[3].timestamps)), rel=0.05)


def test_new_dependency_fault() -> None:
    clean, faulty, fault = _split("new-dependency")
    t = faulty[3]
    known = set(clean[3].endpoints)
    new = [i for i, name in enumerate(t.endpoints) if name not in known]
    assert len(new) == len(fault.new_endpoints()) == 5
    calls_new = np.isin(t.endpoint_idx, new)
    assert not calls_new[~fault.mask(t.timestamps)].any()
    assert np.mean(calls_new[fault.mask(t.timestamps)]) == pytest.approx(0.15, abs=0.02)
    assert all(normalize_endpoint(t.endpoints[i]) == t.endpoints[i] for i in new)


def test_business_fault_on_payments() -> None:
    _, faulty, fault = _split("business")
    kpi = faulty[3].kpis[0]
    assert kpi.name == PAYMENT_KPI
    inside = fault.mask(kpi.timestamps)
    ratio = np.mean(kpi.values[inside]) / np.mean(kpi.values[~inside])
    assert 0.27 < ratio < 0.33
    low, high = PAYMENT_RANGE
    assert np.all((kpi.values[~inside] >= low) & (kpi.values[~inside] <= high))
    assert np.mean(kpi.values[inside] < low) > 0.3


def test_orders_per_window_once_per_window_within_range_and_business_fault() -> None:
    fault = Fault("business", "orders", FAULT_START, FAULT_END)
    sim = Simulation(5, W)
    rng = np.random.default_rng(5)
    ticks = np.append(np.arange(0, 1800, 0.7), 1800)  # live-like ticks that do not divide the window
    kpis = [sim.generate(2, T0 + a, T0 + b, 400.0, rng, [fault]).kpis[0] for a, b in itertools.pairwise(ticks)]
    values = np.concatenate([k.values for k in kpis])
    stamps = np.concatenate([k.timestamps for k in kpis])
    low, high = np.concatenate([k.low for k in kpis]), np.concatenate([k.high for k in kpis])
    assert kpis[0].name == ORDERS_KPI
    # one value in the middle of every window but the first, which the traffic covers only half of
    assert np.array_equal(stamps, T0 + 2.5 + 5 * np.arange(1, 360))
    inside = fault.mask(stamps)
    normal = (values >= low) & (values <= high)
    assert normal[~inside].mean() > 0.97
    root = (5.0 * np.sqrt(low) + 5.5 * np.sqrt(high)) / 10.5  # -5.5 / +5 half-sigmas on the square-root scale
    expected = root**2
    assert np.all(low > 0) and np.all(high - expected > expected - low)  # skewed like the Poisson count
    assert np.mean(values[inside] / expected[inside]) == pytest.approx(0.3, abs=0.05)
    assert np.mean(values[~inside] / expected[~inside]) == pytest.approx(1.0, abs=0.05)
    assert np.mean(values[inside] < low[inside]) > 0.5  # the business fault leaves the range (mostly: ×0.3 of a count)


def test_orders_per_window_follows_a_window_length_change_and_never_undercounts() -> None:
    """The live demo follows `setup --window … --force` (`set_window`): from the change on, orders are
    counted over the new length, and a report whose trailing window reaches before the orders kept
    (two old windows) is left out rather than undercounted."""
    sim = Simulation(5, 1)
    svc, ep = sim.names.index("orders"), KPI_ENDPOINT["orders"]
    rng = np.random.default_rng(8)
    orders, reports = [], []

    def run(ticks: np.ndarray) -> None:
        for a, b in itertools.pairwise(ticks):
            traffic = sim.generate(svc, T0 + a, T0 + b, 400.0, rng)
            orders.append(traffic.timestamps[(traffic.endpoint_idx == ep) & (traffic.status < 400)])
            reports.extend(zip(traffic.kpis[0].timestamps, traffic.kpis[0].values, strict=True))

    run(np.append(np.arange(0, 20, 0.7), 20))
    sim.set_window(10, T0 + 20)
    run(np.append(np.arange(20, 60, 0.7), 60))
    seen = np.concatenate(orders)
    after = [(t - T0, v) for t, v in reports if t >= T0 + 20]
    # 25 would count from 15, but only the orders since 18 are kept: no report there
    assert [t for t, _v in after] == [35, 45, 55]
    for t, value in after:
        assert value == np.count_nonzero((seen >= T0 + t - 10) & (seen < T0 + t)) > 0
    with pytest.raises(ValueError, match="at least 1 second"):
        sim.set_window(0, T0 + 60)


def test_orders_range_is_left_about_once_in_months_by_poisson_counts() -> None:
    """Exact Poisson tails over a day of 5-second windows at the demo's load (the old ±3.5σ + 10 %: ~2 a day)."""
    from scipy.stats import poisson

    sim = Simulation(5, W)
    svc = sim.names.index("orders")
    model, ep = sim.services[svc], KPI_ENDPOINT["orders"]
    t = T0 + np.arange(0, 86_400, W, dtype=np.float64)
    mu = np.array([sim.expected_rate(svc, 200.0, x) for x in t]) * model.share_of(ep) * W * (
        1 - model.p4xx[ep] - model.p5xx[ep])
    bounds = np.array([orders_range(m) for m in mu])
    outside = poisson.sf(np.floor(bounds[:, 1]), mu) + poisson.cdf(np.ceil(bounds[:, 0]) - 1, mu)
    assert outside.sum() < 0.03  # expected breaches in a normal day
    assert orders_range(0.0) == (0.0, pytest.approx(5.0**2 / 4))


def test_services_are_stable_across_instances() -> None:
    assert [s.name for s in build_services(6)] == service_names(6)

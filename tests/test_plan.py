"""``snapload plan``: closed forms on long Poisson traces, hand-made traces with known answers, bad
input, the patterns, and the CLI end to end. The event loop's own rules are pinned in
rust/core/tests/plan.rs; these tests go through the Python API and the glue."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import snapload
from snapload import cli
from snapload._plan import sim, traces
from snapload._plan.coldstart import parse_cold_start
from snapload._plan.service import parse_service

REPO = Path(__file__).resolve().parent.parent
COLDSTART_REPORT = REPO / "benches" / "results" / "coldstart.json"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def within_binomial(observed: int, n: int, p: float, sigmas: float = 4.0) -> None:
    """``observed`` successes of ``n`` trials agree with probability ``p``: within ``sigmas``
    binomial standard deviations (4: a false failure about once in 16,000 runs)."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(observed - n * p) <= sigmas * sd, f"{observed} of {n}, expected {n * p:.1f} +- {sigmas} x {sd:.1f}"


# --------------------------------------------------------------------------------------------
# Closed forms on long Poisson traces


@pytest.mark.parametrize("timeout", [0.25, 1.0, 2.0])
def test_cold_fraction_is_exp_minus_rate_times_timeout(timeout: float) -> None:
    # One request per instance, zero service and cold start: an instance goes idle the instant its
    # request arrives, and the next request finds it iff the gap is shorter than the timeout. Gaps
    # of a Poisson process are exponential, so P(cold) = P(gap >= T) = exp(-L T).
    rate = 2.0
    arrivals = traces.generate(f"poisson:{rate}", 100_000, seed=1).times
    w = sim.make_workload(arrivals, np.zeros(arrivals.size), 1, 100_000)
    d = sim.simulate_detail(w, 0.0, sim.Policy(timeout))
    gaps = np.diff(arrivals)
    # Exactly: the first request, plus every request after a gap >= T.
    assert d.outcome.cold == 1 + int(np.count_nonzero(gaps >= timeout))
    within_binomial(d.outcome.cold - 1, gaps.size, math.exp(-rate * timeout))


def test_enough_min_instances_means_no_cold_start() -> None:
    arrivals = traces.generate("poisson:3", 20_000, seed=3).times
    service = parse_service("exp:0.5").sample(arrivals.size, 3)
    peak = sim.peak_concurrency(arrivals, service)
    plan = snapload.plan(arrivals, cold_start=10, service="exp:0.5", seed=3, idle_timeout=[0, 60], min_instances=[peak], duration=20_000)
    for r in plan.results:
        assert (r.cold, r.queued, r.p99, r.max, r.launches) == (0, 0, 0.0, 0.0, 0)
        assert r.instance_seconds == pytest.approx(peak * plan.window[1])
    assert plan.always_on_instances == peak
    assert plan.results[0].always_on_ratio == pytest.approx(1.0)


def test_idle_timeout_zero_makes_every_request_cold() -> None:
    arrivals = traces.generate("poisson:5", 2_000, seed=4).times
    plan = snapload.plan(arrivals, cold_start=3.5, service="lognormal:0.2,0.5", seed=4, idle_timeout=0, duration=2_000)
    (r,) = plan.results
    assert r.cold == r.requests == arrivals.size
    assert r.p50 == r.p99 == r.max == 3.5
    # Each instance lives exactly its cold start plus its one request.
    service = parse_service("lognormal:0.2,0.5").sample(arrivals.size, 4)
    assert r.instance_seconds == pytest.approx(arrivals.size * 3.5 + service.sum(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Hand-made traces (the same ones rust/core/tests/plan.rs works out on paper)

T5 = [0.0, 1.0, 10.0, 10.5, 20.0]


def test_hand_trace_idle_timeout() -> None:
    # A launched at 0 (ready 2, done 3, gone 11); B at 1 (done 4, gone 12). 10 takes B (the most
    # recently idled; done 11, gone 19); 10.5 takes A (done 11.5, gone 19.5); 20 launches C (done
    # 23, gone 31). Cold: 3 of 5, each waiting 2 s. Instance-seconds 19.5 + 18 + 11 = 48.5.
    plan = snapload.plan(T5, cold_start=2, service=1, idle_timeout=8, cost_per_hour=3600)
    (r,) = plan.results
    assert (r.requests, r.cold, r.queued, r.launches, r.peak_instances) == (5, 3, 0, 3, 2)
    assert r.cold_fraction == 0.6
    assert (r.p50, r.max, r.mean) == (2.0, 2.0, 1.2)
    assert r.p99 == pytest.approx(2.0)
    assert r.instance_seconds == 48.5
    assert r.cost == pytest.approx(48.5)  # $3600 an hour is $1 a second
    # Window [0, 21] (the last request ends at 21 without a cold start); peak concurrency 2 (10 and
    # 10.5 overlap; 0 ends at 1 as 1 arrives, which is no overlap).
    assert plan.window == (0.0, 21.0)
    assert (plan.peak_concurrency, plan.always_on_instances) == (2, 2)
    assert plan.always_on_cost == pytest.approx(42.0)
    assert r.always_on_ratio == pytest.approx(48.5 / 42)


def test_hand_trace_per_request_detail_and_numpy_percentiles() -> None:
    w = sim.make_workload(np.array(T5), np.ones(5), 1, 0)
    d = sim.simulate_detail(w, 2.0, sim.Policy(8.0))
    assert d.added.tolist() == [2.0, 2.0, 0.0, 0.0, 2.0]
    assert d.start.tolist() == [1, 1, 0, 0, 1]
    for q, got in ((50, d.outcome.p50), (95, d.outcome.p95), (99, d.outcome.p99)):
        assert got == pytest.approx(np.percentile(d.added, q))


def test_hand_trace_max_instances_queue() -> None:
    # One instance: 1 waits for 0's request (until 3), 10.5 waits for 10's (until 11).
    w = sim.make_workload(np.array(T5), np.ones(5), 1, 0)
    d = sim.simulate_detail(w, 2.0, sim.Policy(8.0, max_instances=1))
    assert d.added.tolist() == [2.0, 2.0, 0.0, 0.5, 2.0]
    assert d.start.tolist() == [1, 3, 0, 3, 1]
    assert (d.outcome.cold, d.outcome.queued, d.outcome.peak_instances) == (2, 2, 1)
    assert d.outcome.instance_seconds == 20.0 + 11.0


def test_hand_trace_min_instances() -> None:
    # The permanent instance serves all but 10.5, which launches one (gone at 21.5).
    plan = snapload.plan(T5, cold_start=2, service=1, idle_timeout=8, min_instances=1, cost_per_hour=3600)
    (r,) = plan.results
    assert (r.cold, r.launches) == (1, 1)
    assert r.instance_seconds == 21.0 + 11.0


def test_hand_trace_keep_warm_pings() -> None:
    # Pings every 2 s over [0, 11), timeout 3: the ping at 0 launches an instance the request at 0
    # joins; pings at 4, 6, 8, 10 keep it, so the request at 10 is warm. Lives 0 to 14.
    w = sim.make_workload(np.array([0.0, 10.0]), np.ones(2), 1, 0)
    d = sim.simulate_detail(w, 2.0, sim.Policy(3.0, keep_warm_interval=2.0))
    assert d.added.tolist() == [2.0, 0.0]
    assert d.start.tolist() == [2, 0]
    assert (d.outcome.launches, d.outcome.ping_launches, d.outcome.instance_seconds) == (1, 1, 14.0)
    no_pings = sim.simulate_detail(w, 2.0, sim.Policy(3.0))
    assert no_pings.start.tolist() == [1, 1]


def test_hand_trace_concurrency_two() -> None:
    # Two slots: 1 joins the instance 0 launched (waits the last 1 s of its cold start); 1.5
    # launches a second; 7 takes its free slot.
    plan = snapload.plan([0, 1, 1.5, 7], cold_start=2, service=4, concurrency=2, idle_timeout=1, cost_per_hour=3600)
    (r,) = plan.results
    assert (r.cold, r.launches, r.peak_instances, r.max) == (3, 2, 2, 2.0)
    assert r.mean == pytest.approx((2 + 1 + 2 + 0) / 4)
    assert r.instance_seconds == 7.0 + 10.5


def test_policy_grid_is_every_combination_in_order() -> None:
    plan = snapload.plan(T5, cold_start=[2, 1], service=1, idle_timeout=[0, 8], min_instances=[0, 1], keep_warm_interval=[None, 5], max_instances=[None, 2])
    assert len(plan.results) == 2 * 2 * 2 * 2 * 2
    first = [r.policy for r in plan.for_cold_start(0)]
    assert first[0] == sim.Policy(0, 0, None, None)
    assert first[1] == sim.Policy(0, 0, None, 2)
    assert first[-1] == sim.Policy(8, 1, 5, 2)
    assert [r.cold_start for r in plan.results] == [2.0] * 16 + [1.0] * 16


def test_pareto_front_and_savings_at_equal_p99() -> None:
    arrivals = traces.generate("poisson:0.2", 50_000, seed=5).times
    plan = snapload.plan(arrivals, cold_start=[9.0, 3.0], service=1, idle_timeout=[0, 10, 60, 300, 3600], min_instances=[0, 1], duration=50_000)
    for i in range(2):
        front = plan.pareto(i)
        everything = plan.for_cold_start(i)
        for f in front:  # nothing on the front is dominated
            assert not any(r.cost < f.cost and r.p99 < f.p99 for r in everything)
        for r in everything:  # everything off the front is dominated or tied
            assert r in front or any(f.cost <= r.cost and f.p99 <= r.p99 for f in front)
    savings = plan.savings(0, 1)
    assert savings, "no p99 target"
    for s in savings:
        assert s.candidate is not None  # a faster cold start reaches every target the slower one does
        if s.baseline is not None:
            assert s.saved is not None and s.saved >= 0
            assert s.baseline.p99 <= s.p99_target + 1e-9 and s.candidate.p99 <= s.p99_target + 1e-9


# --------------------------------------------------------------------------------------------
# Inputs: traces, patterns, service times, cold starts


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trace_plain_numbers_unsorted(tmp_path: Path) -> None:
    a = traces.read_trace(write(tmp_path, "105.5\n100\n\n# a comment\n102\n"))
    assert a.times.tolist() == [0.0, 2.0, 5.5]


def test_trace_timestamp_column_and_iso_times(tmp_path: Path) -> None:
    a = traces.read_trace(write(tmp_path, "path,Timestamp\n/a,1700000010\n/b,1700000000.25\n"))
    assert a.times.tolist() == [0.0, 9.75]
    b = traces.read_trace(write(tmp_path, "timestamp\n2026-01-01T00:00:10Z\n2026-01-01T00:00:00+00:00\n2026-01-01T00:01:00\n"))
    assert b.times.tolist() == [0.0, 10.0, 60.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no requests"),
        ("timestamp\n", "no requests"),
        ("1\n2\nabc\n4\n", "line 3: 'abc' is not a number"),
        ("timestamp,x\n1,a\n\n2,b\nsoon,c\n", "line 5: 'soon' is not a number"),
        ("1\n-2\n", "line 2: request time '-2' is negative"),
        ("1\nnan\n", "line 2: request time 'nan' is not a finite number"),
        ("time\n1\n", "line 1: 'time' is not a request time"),
        ("a,b\n1,2\n", "none named 'timestamp'"),
        ("x,timestamp\na,1\n2\n", "line 3: 1 column(s), expected at least 2"),
    ],
)
def test_trace_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=None) as e:
        traces.read_trace(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_trace_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        snapload.plan(tmp_path / "nope.csv", cold_start=1)


@pytest.mark.parametrize(
    ("spec", "duration", "message"),
    [
        ("poisson:0", 10, "Poisson rate must be a number > 0"),
        ("poisson:-1", 10, "Poisson rate must be a number > 0"),
        ("poisson:1", 0, "duration must be"),
        ("poisson:x", 10, "not a list of numbers"),
        ("diurnal:0", 10, "diurnal mean rate"),
        ("diurnal:1,1.5", 10, "amplitude"),
        ("bursty:1,0,1,1", 10, "burst rate"),
        ("bursty:-1,5,1,1", 10, "quiet rate"),
        ("bursty:1,5,1", 10, "expected 4"),
        ("poisson:1e-9", 1, "produced no requests"),
    ],
)
def test_bad_patterns(spec: str, duration: float, message: str) -> None:
    with pytest.raises(ValueError) as e:
        traces.generate(spec, duration, seed=0)
    assert message in str(e.value)


def test_patterns_are_seeded_and_shaped() -> None:
    a = traces.generate("poisson:2", 1000, seed=7).times
    assert np.array_equal(a, traces.generate("poisson:2", 1000, seed=7).times)
    assert not np.array_equal(a, traces.generate("poisson:2", 1000, seed=8).times)
    assert np.all(np.diff(a) >= 0) and a.min() >= 0 and a.max() <= 1000
    within_binomial(a.size, 1_000_000, 2000 / 1_000_000)  # a Poisson count is nearly binomial
    # Diurnal: mean 1, amplitude 0.8, period 1000: the middle half of the period holds
    # (1/2 + 0.8/pi) of the requests.
    d = traces.generate("diurnal:1,0.8,1000", 100_000, seed=7).times
    middle = np.count_nonzero(((d % 1000) >= 250) & ((d % 1000) < 750))
    within_binomial(middle, d.size, 0.5 + 0.8 / math.pi)
    # Bursty: long-run rate (q Q + b B) / (Q + B).
    b = traces.generate("bursty:0.1,10,20,180", 4_000_000, seed=7).times
    assert b.size / 4_000_000 == pytest.approx((0.1 * 180 + 10 * 20) / 200, rel=0.05)
    # The service distribution draws from its own stream: the arrivals do not change with it.
    p1 = snapload.plan("poisson:1", duration=100, cold_start=1, service=1, seed=3)
    p2 = snapload.plan("poisson:1", duration=100, cold_start=1, service="exp:2", seed=3)
    assert p1.requests == p2.requests


@pytest.mark.parametrize("spec", ["-1", "exp:0", "exp:-2", "lognormal:1", "lognormal:0,1", "uniform:2,1", "gamma:1", "fast", "exp:nan"])
def test_bad_service(spec: str) -> None:
    with pytest.raises(ValueError, match="service time"):
        parse_service(spec)


def test_service_distributions() -> None:
    assert parse_service("0.25").sample(3, 0).tolist() == [0.25] * 3
    assert parse_service("exp:2").sample(200_000, 0).mean() == pytest.approx(2, rel=0.02)
    assert np.median(parse_service("lognormal:0.5,0.7").sample(200_000, 0)) == pytest.approx(0.5, rel=0.02)
    u = parse_service("uniform:1,3").sample(1000, 0)
    assert u.min() >= 1 and u.max() <= 3


def test_cold_start_from_the_coldstart_report() -> None:
    report = json.loads(COLDSTART_REPORT.read_text())
    c = parse_cold_start(f"{COLDSTART_REPORT}:st_assign")
    assert c.seconds == report["summary"]["st_assign"]["phases"]["total"]
    with pytest.raises(ValueError, match="name the variant.*snapload_prefetch_nowait"):
        parse_cold_start(str(COLDSTART_REPORT))
    with pytest.raises(ValueError, match="no variant 'nope'"):
        parse_cold_start(f"{COLDSTART_REPORT}:nope")


def test_cold_start_from_snapload_bench_json(tmp_path: Path) -> None:
    modes = [
        {"mode": "cold", "eager": True, "total_s": {"median": 9.0}},
        {"mode": "cold", "eager": False, "total_s": {"median": 1.25}},
        {"mode": "warm", "eager": False, "total_s": {"median": 0.1}},
    ]
    path = write(tmp_path, json.dumps({"path": "m.snap", "modes": modes}), "bench.json")
    assert parse_cold_start(str(path)).seconds == 1.25
    warm_only = write(tmp_path, json.dumps({"modes": modes[2:]}), "warm.json")
    with pytest.raises(ValueError, match="no cold"):
        parse_cold_start(str(warm_only))
    other = write(tmp_path, json.dumps({"x": 1}), "other.json")
    with pytest.raises(ValueError, match="neither"):
        parse_cold_start(str(other))
    with pytest.raises(ValueError, match="cold start must be"):
        parse_cold_start("-3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cost_per_hour": 0}, "cost per hour"),
        ({"concurrency": 0}, "concurrency"),
        ({"idle_timeout": -1}, "idle timeout"),
        ({"keep_warm_interval": 0}, "keep-warm interval"),
        ({"min_instances": 2, "max_instances": 1}, "max instances"),
        ({"cold_start": [1, 1]}, "twice"),
        ({"threads": -1}, "threads"),
        ({"min_instances": 10**7}, "min instances"),
        ({"duration": -5}, "duration"),
    ],
)
def test_bad_plan_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"cold_start": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        snapload.plan(T5, **args)  # type: ignore[arg-type]


def test_bad_arrays() -> None:
    with pytest.raises(ValueError, match="no request times"):
        snapload.plan([], cold_start=1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        snapload.plan([1, -1], cold_start=1)


# --------------------------------------------------------------------------------------------
# The CLI


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["plan", "--poisson", "0.5", "--duration", "3600", "--cold-start", "5", "--idle-timeout", "0,60", "--min-instances", "0,1", "--keep-warm-interval", "none,30", "--json"], capsys
    )
    assert code == 0
    d = json.loads(out)
    assert len(d["results"]) == 8
    r = d["results"][0]
    assert r["policy"] == {"idle_timeout": 0.0, "min_instances": 0, "keep_warm_interval": None, "max_instances": None, "label": "idle 0s"}
    assert r["cold_fraction"] == 1.0 and r["added_latency"]["p99"] == 5.0
    assert set(r) >= {"requests", "queued_fraction", "instance_seconds", "cost", "always_on_ratio"}
    assert d["always_on_instances"] >= 1 and d["window"][1] >= 3600
    assert "savings" not in d


def test_cli_table_compare_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "plan.png"
    code, out, _ = run_cli(
        [
            "plan", "--diurnal", "0.05,0.9,3600", "--duration", "7200", "--service", "exp:1", "--seed", "1",
            "--compare-cold-start", f"{COLDSTART_REPORT}:st_assign,2", "--idle-timeout", "0,300,1800",
            "--min-instances", "0,1", "--chart", str(chart),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "cold start st_assign" in out and "cold start 2 s" in out
    assert "cost at equal p99" in out and f"chart written to {chart}" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_trace_errors_exit_2_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path, "timestamp\n1\n2\nlater\n")
    code, out, err = run_cli(["plan", "--trace", str(trace), "--cold-start", "1"], capsys)
    assert code == 2 and "line 4" in err and "Traceback" not in err
    code, _, err = run_cli(["plan", "--poisson", "-1", "--duration", "10", "--cold-start", "1"], capsys)
    assert code == 2 and "Poisson rate must be a number > 0" in err
    code, _, err = run_cli(["plan", "--poisson", "1", "--cold-start", "1"], capsys)
    assert code == 2 and "--duration" in err
    code, _, err = run_cli(["plan", "--poisson", "1", "--duration", "10", "--compare-cold-start", "1"], capsys)
    assert code == 2 and "exactly two" in err
    code, _, err = run_cli(["plan", "--trace", str(tmp_path / "missing.csv"), "--cold-start", "1"], capsys)
    assert code == 2 and "missing.csv" in err


def test_cli_as_a_program_stays_light(tmp_path: Path) -> None:
    # Registering the subcommand must not import numpy or matplotlib: every CLI start pays for it.
    code = "import sys; from snapload import cli; cli.build_parser(); print(sorted({'numpy', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    trace = write(tmp_path, "0\n1\n10\n10.5\n20\n")
    proc = subprocess.run([sys.executable, "-m", "snapload.cli", "plan", "--trace", str(trace), "--cold-start", "2", "--idle-timeout", "8", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(proc.stdout)["results"]
    assert (r["cold_starts"], r["instance_seconds"]) == (3, 48.5)


# --------------------------------------------------------------------------------------------
# Against a second, plain implementation of the model (concurrency 1, 2 and 3)


def test_agrees_with_the_plain_reference_model() -> None:
    from _plan_reference import simulate as reference

    rng = np.random.default_rng(11)
    checked = {1: 0, 2: 0, 3: 0}
    kinds: set[int] = set()
    for trace in range(30):
        concurrency = 1 + trace % 3
        n = int(rng.integers(1, 120))
        # Quarter-second times and services: many exact ties between arrivals, completions,
        # reclaims and pings, where the ordering rules matter.
        arrivals = np.sort(np.round(rng.exponential(rng.choice([0.3, 1.0, 3.0]), n).cumsum() * 4) / 4)
        service = np.round(rng.uniform(0, 3, n) * 4) / 4
        cold = float(rng.choice([0.0, 0.5, 2.0]))
        w = sim.make_workload(arrivals, service, concurrency, 0)
        for policy in sim.policy_grid([0, 0.5, 2.5], [0, 1], [None, 1.5, 4], [None, 1, 3]):
            if policy.max_instances is not None and policy.max_instances < policy.min_instances:
                continue
            got = sim.simulate_detail(w, cold, policy)
            want = reference(
                arrivals.tolist(), service.tolist(), cold, w.end,
                policy.idle_timeout, policy.min_instances, policy.keep_warm_interval, policy.max_instances,
                concurrency,
            )  # fmt: skip
            where = f"{policy} concurrency {concurrency} cold {cold} arrivals {arrivals.tolist()} service {service.tolist()}"
            assert got.start.tolist() == want.start, where
            assert got.added.tolist() == pytest.approx(want.added, abs=1e-9), where
            o = got.outcome
            assert (o.launches, o.ping_launches, o.peak_instances) == (want.launches, want.ping_launches, want.peak_instances), where
            assert o.instance_seconds == pytest.approx(want.instance_seconds, abs=1e-6), where
            checked[concurrency] += 1
            kinds.update(want.start)
    assert min(checked.values()) > 300, checked
    assert kinds == {0, 1, 2, 3}, kinds  # warm, launched, joined a starting instance, queued: all reached

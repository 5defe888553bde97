"""``loadtests/cpu_speed.py``: each CPU's time for one fixed loop, measured side by side,
which ``bench_decisions`` prints before and after its phases."""

from __future__ import annotations

import pytest

from loadtests import cpu_speed
from loadtests.cpu_speed import CpuSpeed


def test_the_line_names_each_cpu_the_spread_and_the_range_of_its_seconds() -> None:
    speeds = [CpuSpeed(0, 2494.0, 2641.0, 2611.0, 2479.0),
              CpuSpeed(1, 3141.0, 3200.0, 3161.0, 3131.0)]
    assert cpu_speed.describe(speeds) == (
        "cpu0 2,494 µs, cpu1 3,141 µs per loop of 30,000: the slowest 1.26x the fastest; "
        "one-second medians 2,479-2,611 / 3,131-3,161 µs")
    assert cpu_speed.describe([]) == "unmeasured"


@pytest.mark.skipif(not cpu_speed.available(), reason="this OS cannot pin a process to a CPU")
def test_every_allowed_cpu_is_measured() -> None:
    speeds = cpu_speed.measure(0.3)  # under a second: one one-second median, the median
    assert [s.cpu for s in speeds] == cpu_speed.cpus()
    for s in speeds:
        assert 0 < s.median_us <= s.p90_us
        assert s.fastest_second_us == s.median_us == s.slowest_second_us


def test_the_command_refuses_a_duration_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cpu_speed.main(["--seconds", "0"])
    assert "--seconds must be 0.5..600" in capsys.readouterr().err

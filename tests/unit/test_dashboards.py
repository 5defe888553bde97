"""The Grafana dashboard and the Prometheus alert rules in ``deploy/`` are valid and only use
metrics the service really exposes (``api/metrics.py``): a renamed metric breaks this test,
not a dashboard at 3 am. Every query is parsed by a PromQL parser."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import NO_MODEL, Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = re.compile(r"\b(sendwise_[a-z0-9_]+)\b")
#: series Prometheus itself provides
_BUILTIN = {"up"}


def _exposed_series() -> set[str]:
    """Every sample name ``Metrics`` can expose (counters as ``_total``, histograms as
    ``_bucket``/``_count``/``_sum``), labelled or not."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum",
                    "_created"], "gauge": [""]}[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def _check_query(expr: str, where: str) -> set[str]:
    promql_parser.parse(expr.replace("$__rate_interval", "5m"))  # ValueError on bad syntax
    used = set(_METRIC.findall(expr))
    assert used, f"{where}: query uses no sendwise metric: {expr}"
    return used


def test_grafana_dashboard_queries_exist_and_parse() -> None:
    dashboard: dict[str, Any] = json.loads((DEPLOY / "grafana" / "sendwise.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exposed, used = _exposed_series(), set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            used |= _check_query(target["expr"], panel["title"])
    assert used - exposed == set(), f"the dashboard queries unknown metrics: {used - exposed}"
    # what operators asked for is on the dashboard
    assert {"sendwise_fallback_decisions_total", "sendwise_decision_seconds_bucket",
            "sendwise_redis_seconds_bucket", "sendwise_redis_errors_total",
            "sendwise_decision_reasons_total", "sendwise_model_info",
            "sendwise_policy_version"} <= used


def test_alert_rules_exist_and_parse() -> None:
    rules: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exposed, used, names = _exposed_series(), set(), set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in {"page", "warn"}
            assert rule["annotations"]["summary"]
            used |= _check_query(rule["expr"], rule["alert"])
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert used - exposed - _BUILTIN == set(), f"alerts on unknown metrics: {used - exposed}"
    assert {"SendwiseFallbackRateHigh", "SendwiseDecisionLatencyHigh", "SendwiseRedisErrors",
            "SendwiseModelRefused"} <= names


def test_a_bad_query_is_caught() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        _check_query("sum(rate(sendwise_decisions_total[5m])", "broken")


def test_model_series_exist_before_any_engine_says_which_model() -> None:
    """No fake model numbers: before an engine publishes its model, 'none' and zero."""
    metrics = Metrics()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    assert samples[("sendwise_model_info", (("model_version", NO_MODEL),))] == 1
    assert samples[("sendwise_model_refused_total", ())] == 0
    assert samples[("sendwise_model_score_seconds_count", ())] == 0
    assert samples[("sendwise_redis_errors_total", (("op", "decision"),))] == 0
    assert samples[("sendwise_workers", ())] == 1

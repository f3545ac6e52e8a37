"""Every query in the Grafana dashboard and the alert rules parses as PromQL and asks only for series the
code exports (``vitguard.metrics``), with labels those metrics have and label values the code can emit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import promql_parser
import pytest
from deploy_files import (
    DEPLOY,
    K8S,
    alert_rules,
    compose,
    dashboard_exprs,
    k8s_object,
    load_yaml,
    service_env,
    worker_services,
)
from prometheus_client.metrics import MetricWrapperBase

from vitguard import metrics
from vitguard.errors import REASON_CODES
from vitguard.schemas.events import NearDuplicateAlert, Verdict
from vitguard.settings import TopicSettings

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vitguard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RULES_K8S = K8S / "base" / "prometheus-rules.yaml"

# Labels every scraped series carries (added by Prometheus), whatever the exporter says.
TARGET_LABELS = {"instance", "job"}

# Third-party series the stack relies on: the Kafka exporter's consumer-group lag (danielqsj/kafka-exporter,
# also what Strimzi's kafka-exporter serves) and Prometheus' own `up`. These cannot be read from our code.
EXTERNAL_SERIES: dict[str, set[str]] = {
    "kafka_consumergroup_lag": {"consumergroup", "topic", "partition"},
    "kafka_consumergroup_lag_sum": {"consumergroup", "topic"},
    "kafka_topic_partitions": {"topic"},
    "up": set(),
}


def _literal_values(annotation: Any) -> set[str]:
    return {str(v) for v in get_args(annotation)}


# Label values the code can emit, read from the schema Literals the metrics are labelled with.
LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("vitguard_dead_letters", "reason"): set(REASON_CODES),
    ("vitguard_alerts", "severity"): _literal_values(NearDuplicateAlert.model_fields["severity"].annotation),
    ("vitguard_verdicts", "label"): _literal_values(Verdict.model_fields["label"].annotation),
}


@dataclass
class Series:
    family: str
    labels: set[str]


def exported_series() -> dict[str, Series]:
    """Series names ``/metrics`` can carry, from the metric objects in ``vitguard.metrics`` and their types."""
    collectors = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    registered = {fam.name for fam in metrics.REGISTRY.collect()}
    out: dict[str, Series] = {}
    for c in collectors:
        family = c._name  # prometheus_client strips a counter's _total here
        assert family in registered, f"{family} is not in vitguard.metrics.REGISTRY, so /metrics omits it"
        labels = set(c._labelnames)
        suffixes = {
            "counter": ["_total", "_created"],
            "gauge": [""],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "summary": ["", "_sum", "_count", "_created"],
            "info": ["_info"],
        }[c._type]
        for suffix in suffixes:
            out[family + suffix] = Series(family, labels | ({"le"} if suffix == "_bucket" else set()))
    return out


@dataclass
class Usage:
    """What one PromQL expression asks for."""

    selectors: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def _usage(expr: str) -> Usage:
    tree = promql_parser.parse(expr)  # raises on a syntax error
    usage = Usage()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, _OPS[str(m.op).rsplit(".", 1)[-1]], m.value)
                        for m in node.matchers.matchers if m.name != "__name__"]
            usage.selectors.append((node.name or "", matchers))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            usage.grouping |= set(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                usage.grouping |= set(node.modifier.matching.labels)
        return True

    promql_parser.walk(tree, visit)
    return usage


@dataclass
class Context:
    series: dict[str, Series]
    consumer_group: str
    input_topic: str
    scrape_job: str


@pytest.fixture(scope="module")
def ctx() -> Context:
    workers = worker_services(compose())
    env = service_env(next(iter(workers.values())))
    defaults = TopicSettings()
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = [j["job_name"] for j in scrape["scrape_configs"] if "worker-1:" in str(j["static_configs"])]
    return Context(
        series=exported_series(),
        consumer_group=env.get("VITGUARD_KAFKA_CONSUMER_GROUP", "vitguard"),
        input_topic=env.get("VITGUARD_TOPIC_IMAGES", defaults.images),
        scrape_job=jobs[0],
    )


def problems(expr: str, ctx: Context) -> list[str]:
    """Why ``expr`` would show nothing (or the wrong thing) against vitguard's real /metrics."""
    try:
        usage = _usage(expr)
    except Exception as exc:
        return [f"does not parse: {exc}"]
    out: list[str] = []
    available: set[str] = set(TARGET_LABELS)
    for name, matchers in usage.selectors:
        if name.startswith("vitguard_"):
            series = ctx.series.get(name)
            if series is None:
                out.append(f"{name} is not exported by vitguard.metrics")
                continue
            labels, family = series.labels | TARGET_LABELS, series.family
        elif name in EXTERNAL_SERIES:
            labels, family = EXTERNAL_SERIES[name] | TARGET_LABELS, name
        else:
            out.append(f"{name!r} is neither a vitguard metric nor a known exporter series")
            continue
        available |= labels
        for label, op, value in matchers:
            if label not in labels:
                out.append(f"{name} has no label {label!r}")
                continue
            allowed = LABEL_VALUES.get((family, label))
            if allowed is not None and op in {"=", "=~"}:
                wanted = set(value.split("|")) if op == "=~" else {value}
                if bad := wanted - allowed:
                    out.append(f"{name}{{{label}}} never takes the value(s) {sorted(bad)}")
            if (name, label) == ("up", "job") and value != ctx.scrape_job:
                out.append(f'up{{job="{value}"}} but the workers are scraped as job "{ctx.scrape_job}"')
            if name.startswith("kafka_") and label == "consumergroup" and value != ctx.consumer_group:
                out.append(f"consumergroup {value!r} is not the workers' group {ctx.consumer_group!r}")
            if name.startswith("kafka_") and label == "topic" and value != ctx.input_topic:
                out.append(f"topic {value!r} is not the input topic {ctx.input_topic!r}")
    if unknown := usage.grouping - available:
        out.append(f"groups by labels no selected series has: {sorted(unknown)}")
    return out


def _rule_groups(path: Path) -> list[dict[str, Any]]:
    data = load_yaml(path)
    return data["groups"] if "groups" in data else data["spec"]["groups"]


# --- the checker itself ------------------------------------------------------------------------------


def test_exported_series_are_read_from_the_code(ctx: Context) -> None:
    assert "vitguard_verdicts_total" in ctx.series
    assert "vitguard_batch_duration_seconds_bucket" in ctx.series
    assert "le" in ctx.series["vitguard_batch_duration_seconds_bucket"].labels
    families = {s.family for s in ctx.series.values()}
    for name in metrics.METRIC_NAMES:  # the module's own list: series names, histograms by family name
        assert name in ctx.series or name in families, f"METRIC_NAMES lists {name}, which no metric exports"


@pytest.mark.parametrize(
    "expr",
    [
        "rate(vitguard_verdicts[5m])",  # a counter is exported with _total
        "vitguard_batch_duration_seconds_total",  # a histogram has no _total
        "rate(vitguard_nope_total[5m])",
        'sum(rate(vitguard_verdicts_total{lable="unsafe"}[5m]))',
        'sum(rate(vitguard_verdicts_total{label="maybe"}[5m]))',
        'rate(vitguard_dead_letters_total{reason=~"fetch_failed|no_such_reason"}[5m])',
        "sum by (reason) (rate(vitguard_verdicts_total[5m]))",
        'kafka_consumergroup_lag{consumergroup="someone-else"}',
        'up{job="elsewhere"} == 0',
        "sum(rate(vitguard_verdicts_total[5m])",  # syntax
    ],
)
def test_checker_rejects_queries_that_would_show_nothing(ctx: Context, expr: str) -> None:
    assert problems(expr, ctx), f"the checker accepted {expr!r}"


# --- the dashboard -------------------------------------------------------------------------------


def test_dashboard_queries_only_use_exported_metrics(ctx: Context) -> None:
    exprs = list(dashboard_exprs(DASHBOARD))
    assert len(exprs) >= 10
    found = {f"{title}: {expr}": p for title, expr in exprs if (p := problems(expr, ctx))}
    assert not found, json.dumps(found, indent=2)


def test_dashboard_shows_what_operators_need() -> None:
    exprs = [expr for _, expr in dashboard_exprs(DASHBOARD)]
    usages = [_usage(e) for e in exprs]

    def shows(metric: str, by: str | None = None) -> bool:
        return any(
            any(name == metric for name, _ in u.selectors) and (by is None or by in u.grouping) for u in usages
        )

    assert shows("vitguard_events_consumed_total"), "throughput"
    assert shows("vitguard_verdicts_total", by="label"), "verdicts by label"
    assert shows("vitguard_dead_letters_total", by="reason"), "dead letters by reason"
    assert shows("vitguard_batch_duration_seconds_bucket", by="le"), "batch latency quantiles"
    assert shows("kafka_consumergroup_lag"), "consumer lag"
    assert shows("vitguard_alerts_total", by="severity"), "wave alerts"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    dash = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            if "datasource" in panel:
                assert panel["datasource"]["uid"] in uids, panel["title"]
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids, panel["title"]
            walk(panel.get("panels", []))

    walk(dash["panels"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "vitguard.yml")
    path = provider["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts, "Grafana is told to load dashboards from an unmounted path"


# --- alert rules ---------------------------------------------------------------------------------


def test_compose_and_k8s_alert_rules_are_identical() -> None:
    assert _rule_groups(ALERTS) == _rule_groups(RULES_K8S)
    assert k8s_object("PrometheusRule", RULES_K8S)["kind"] == "PrometheusRule"


def test_alert_rules_only_use_exported_metrics(ctx: Context) -> None:
    found = {r["alert"]: p for r in alert_rules(_rule_groups(ALERTS)) if (p := problems(r["expr"], ctx))}
    assert not found, json.dumps(found, indent=2)


def test_alert_rules_cover_lag_dead_letters_waves_and_workers() -> None:
    rules = list(alert_rules(_rule_groups(ALERTS)))
    by_name = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules), "alert names must be unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]

    def uses(metric: str) -> list[str]:
        return [r["alert"] for r in rules if any(n == metric for n, _ in _usage(r["expr"]).selectors)]

    assert uses("kafka_consumergroup_lag"), "an alert on consumer lag"
    assert uses("vitguard_dead_letters_total"), "an alert on the dead-letter rate"
    assert uses("up"), "an alert on a worker being down"
    waves = [r for r in rules if "vitguard_alerts_total" in r["expr"] and 'severity="critical"' in r["expr"]]
    assert waves, "an alert on abuse waves (critical near-duplicate alerts)"

#!/usr/bin/env python3
"""The alert rules and the Grafana dashboard against the operator's metric
contract (docs/reference.md, "Metrics").

Used by ci/monitoring/check.sh, ci/check_chart.py and ci/monitoring/metric-names.sh.
Needs only Python 3.10+ and PyYAML.

    monitoring.py metric-names [--families]
        Every xks_operator_* name the alert rules and the dashboard query, one
        per line, sorted. Default: sample names as they appear on /metrics
        lines (xks_operator_operations_total, ..._seconds_bucket);
        --families: the metric families (# TYPE lines of OpenMetrics: no
        _total, _bucket, _sum, _count suffix).
    monitoring.py check-names
        Every queried name is a sample of a family of the contract.
    monitoring.py check-tests
        Every alert has a test that expects it to fire, and the promtool
        tests' input series are shaped like the contract: known
        names, exactly the contract's labels (plus scrape target labels),
        label values from the documented sets, and every enum gauge
        (state, phase, health) with all of its values for each store.
    monitoring.py dashboard-rules OUT
        Writes every PromQL expression of the dashboard (Grafana variables
        replaced by sample values) as recording rules to OUT, for
        `promtool check rules`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RULES_FILE = os.path.join(HERE, "xks-operator.rules.yaml")
TESTS_DIR = os.path.join(HERE, "tests")
DASHBOARD_FILE = os.path.join(ROOT, "charts", "xks-operator", "dashboards", "xks-operator.json")

# --------------------------------------------------------------------------
# The metric contract
# --------------------------------------------------------------------------

STORE = ("namespace", "name", "account", "region")
STATES = ("CONNECTED", "CONNECTING", "DISCONNECTED", "DISCONNECTING", "FAILED")
PHASES = ("Planned", "Running", "AwaitingApproval", "RollingBack", "Succeeded", "Failed", "RolledBack")
HEALTHS = ("ACTIVE", "DEGRADED", "UNAVAILABLE")
TRIGGERS = ("Create", "Rename", "CredentialRotation", "UriPath", "Endpoint", "Recovery", "Connect",
            "Disconnect", "Delete")
OUTCOMES = ("Succeeded", "Failed", "RolledBack")

# family -> (type, labels). Sample names: a counter's family name + _total
# (the contract names counters with it); a histogram's + _bucket/_sum/_count.
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "xks_operator_store_connection_state": ("gauge", STORE + ("state",)),
    "xks_operator_store_desired_connected": ("gauge", STORE),
    "xks_operator_store_ready": ("gauge", STORE),
    "xks_operator_store_connection_error": ("gauge", STORE + ("code",)),
    "xks_operator_operation_phase": ("gauge", STORE + ("phase",)),
    "xks_operator_operation_started_timestamp_seconds": ("gauge", STORE),
    "xks_operator_proxy_healthy": ("gauge", STORE),
    "xks_operator_proxy_key_manager_health": ("gauge", STORE + ("key_manager", "health")),
    "xks_operator_operations": ("counter", ("trigger", "outcome")),
    "xks_operator_operation_duration_seconds": ("histogram", ("trigger", "outcome")),
    "xks_operator_disruption_seconds": ("histogram", ("account", "region")),
    "xks_operator_kms_calls": ("counter", ("account", "region", "operation", "outcome")),
    "xks_operator_kms_throttles": ("counter", ("account", "region", "operation")),
    "xks_operator_kms_rate_limited_calls": ("counter", ("account", "region", "operation")),
    "xks_operator_reconciles": ("counter", ()),
    "xks_operator_reconcile_failures": ("counter", ("reason",)),
    "xks_operator_step_duration_seconds": ("histogram", ("step",)),
    "xks_operator_ready": ("gauge", ()),
    "xks_operator_leader": ("gauge", ()),
}
# Label values the contract fixes: a tuple of values or a regular expression.
ENUMS = {"state": STATES, "phase": PHASES, "health": HEALTHS, "trigger": TRIGGERS}
LABEL_VALUES: dict[str, dict[str, tuple[str, ...] | str]] = {
    "xks_operator_operations": {"outcome": OUTCOMES},
    "xks_operator_operation_duration_seconds": {"outcome": OUTCOMES},
    # ok, transport, or the KMS error code (ThrottlingException, ...).
    "xks_operator_kms_calls": {"outcome": r"ok|transport|[A-Z][A-Za-z]+"},
    "xks_operator_store_connection_error": {"code": r"[A-Z][A-Z_]+"},
}
# Enum gauges: one series per value, 1 for the current one, 0 for the others.
ENUM_GAUGES = {
    "xks_operator_store_connection_state": "state",
    "xks_operator_operation_phase": "phase",
    "xks_operator_proxy_key_manager_health": "health",
}
# Labels the scrape adds (Prometheus Operator ServiceMonitor). With
# honorLabels, `namespace` is the ExternalKeyStore's on the per-store metrics
# and the operator's (a target label) on the others.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "service", "endpoint", "container"}


def samples_of(family: str) -> list[str]:
    kind = CONTRACT[family][0]
    if kind == "counter":
        return [family + "_total"]
    if kind == "histogram":
        return [family + s for s in ("_bucket", "_sum", "_count")]
    return [family]


SAMPLES = {s: f for f in CONTRACT for s in samples_of(f)}

# --------------------------------------------------------------------------
# Expressions of the rules and the dashboard
# --------------------------------------------------------------------------

NAME_RE = re.compile(r"\bxks_operator_[a-z_]+\b")


def rule_exprs(path: str = RULES_FILE) -> list[tuple[str, str]]:
    """(alert or record name, expr) of every rule."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def load_dashboard(path: str = DASHBOARD_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out += p.get("panels", [])  # collapsed rows keep their panels inside
    return out


def label_values_selector(query: str) -> str | None:
    """The series selector of a Grafana label_values(selector, label) query."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query, re.S)
    return m.group(1) if m else None


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable query."""
    out = []
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        sel = label_values_selector(q or "")
        out.append((f"variable {v['name']}", sel if sel is not None else q))
    return out


# Grafana's built-in interval variables, and a value for each of the
# dashboard's own variables, to turn a panel query into plain PromQL.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h", "__range_s": "21600"}


def substitute(expr: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        return ".*"  # a multi-value variable inside a =~ matcher
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def queried_samples() -> list[str]:
    names = set()
    for _, e in rule_exprs():
        names.update(NAME_RE.findall(e))
    for _, e in dashboard_exprs(load_dashboard()):
        names.update(NAME_RE.findall(e))
    return sorted(names)


def metric_names(families: bool = False) -> list[str]:
    names = queried_samples()
    if families:
        return sorted({SAMPLES.get(n, n) for n in names})
    return names


def check_names() -> list[str]:
    """Problems: queried names that are no sample of the contract."""
    return [f"{n} is not a metric of the contract (docs/reference.md, Metrics)"
            for n in queried_samples() if n not in SAMPLES]


def dashboard_rules(dashboard: dict) -> dict:
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(e),
              "labels": {"where": where[:200]}}
             for i, (where, e) in enumerate(dashboard_exprs(dashboard))]
    return {"groups": [{"name": "dashboard-expressions", "rules": rules}]}


# --------------------------------------------------------------------------
# promtool test input series against the contract
# --------------------------------------------------------------------------

SERIES_RE = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$", re.S)
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_series(s: str) -> tuple[str, dict]:
    m = SERIES_RE.match(s)
    assert m, f"cannot parse series {s!r}"
    name, body = m.group(1), m.group(2) or ""
    labels, pos = {}, 0
    while pos < len(body):
        lm = LABEL_RE.match(body, pos)
        assert lm, f"cannot parse labels of {s!r} at {body[pos:]!r}"
        labels[lm.group(1)] = lm.group(2)
        pos = lm.end()
    return name, labels


def check_series(name: str, labels: dict) -> list[str]:
    where = f"{name}{{{', '.join(f'{k}={v!r}' for k, v in sorted(labels.items()))}}}"
    fam = SAMPLES.get(name)
    if fam is None:
        return [f"{where}: not a sample of the contract"]
    own = set(CONTRACT[fam][1]) | ({"le"} if name.endswith("_bucket") else set())
    errs = []
    missing = own - set(labels)
    if missing:
        errs.append(f"{where}: lacks {sorted(missing)}")
    extra = set(labels) - own - TARGET_LABELS
    if extra:
        errs.append(f"{where}: labels {sorted(extra)} are not in the contract")
    for k, allowed in {**ENUMS, **LABEL_VALUES.get(fam, {})}.items():
        if k not in own or k not in labels:
            continue
        ok = re.fullmatch(allowed, labels[k]) if isinstance(allowed, str) else labels[k] in allowed
        if not ok:
            errs.append(f"{where}: {k}={labels[k]!r} is not one of {allowed}")
    if "account" in own and labels.get("account") and not re.fullmatch(r"[0-9]{12}", labels["account"]):
        errs.append(f"{where}: account must be 12 digits or empty")
    return errs


def check_tests() -> list[str]:
    errs = []
    files = sorted(glob.glob(os.path.join(TESTS_DIR, "*.yaml")))
    if not files:
        return [f"no promtool tests in {TESTS_DIR}"]
    fired: set[str] = set()
    for path in files:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for i, t in enumerate(doc.get("tests", [])):
            fired.update(a["alertname"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts"))
            enum_sets: dict[tuple, set] = {}
            for s in t.get("input_series", []):
                name, labels = parse_series(s["series"])
                errs += [f"{os.path.basename(path)} test {i}: {e}" for e in check_series(name, labels)]
                if name in ENUM_GAUGES:
                    k = ENUM_GAUGES[name]
                    key = (name,) + tuple(sorted((a, b) for a, b in labels.items() if a != k))
                    enum_sets.setdefault(key, set()).add(labels.get(k))
            for key, values in enum_sets.items():
                want = set(ENUMS[ENUM_GAUGES[key[0]]])
                if values != want:
                    errs.append(f"{os.path.basename(path)} test {i}: {key[0]} {dict(key[1:])} has "
                                f"{sorted(v for v in values if v)}, the contract exports all of {sorted(want)}")
    alerts = [name for name, _ in rule_exprs() if name and name[0].isupper()]
    errs += [f"no test expects {a} to fire" for a in alerts if a not in fired]
    return errs


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd = argv[0]
    if cmd == "metric-names":
        print("\n".join(metric_names(families="--families" in argv)))
        return 0
    if cmd in ("check-names", "check-tests"):
        errs = check_names() if cmd == "check-names" else check_tests()
        for e in errs:
            print(f"FAIL {e}")
        return 1 if errs else 0
    if cmd == "dashboard-rules":
        with open(argv[1], "w") as f:
            yaml.safe_dump(dashboard_rules(load_dashboard()), f, sort_keys=False, width=1000)
        return 0
    print(f"unknown command {cmd}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

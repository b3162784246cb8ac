#!/usr/bin/env python3
"""Lint, render and validate the Helm charts and the examples.

Run by ci/check-chart.sh (which installs the Python packages). Checks:

1. helm lint (strict) of both charts, for default values and every
   ci/values/*.yaml that is not bad-*.yaml.
2. Render both charts (Helm's Go SDK through helm-python-sdk) for the same
   value sets; validate every rendered object against the Kubernetes OpenAPI
   schemas (kubernetes-validate, strict: unknown fields fail) and assert what
   each value set must produce (hardened pod, probes, flags, RBAC, PDB, ...).
   RBAC: the operator's ServiceAccount gets exactly its rules cluster-wide
   (watchNamespaces empty) or by a Role in each watched namespace (and then
   nothing cluster-wide, no ClusterRole rule on Secrets), leases only with
   leader election; the viewer/editor ClusterRoles for people have exact
   rules, are bound to nobody and carry the aggregation labels userRoles
   asks for (view by default, never edit/admin unless asked). roleAllowList
   (the admin's namespace -> IAM role allow-list) becomes exactly one
   `--allow-role NAMESPACE=ROLE_ARN` per entry, sorted by namespace, then in
   list order; none by default.
3. Every ci/values/bad-*.yaml is rejected by schema or template, with the
   message in its `# expect:` first line.
4. The CRD chart renders exactly crds/externalkeystores.xks-operator.io.yaml
   (plus labels and the helm.sh/resource-policy: keep annotation).
5. examples/*.yaml: Secrets against the Kubernetes schemas; ExternalKeyStores
   against the CRD's openAPIV3Schema (jsonschema, after applying the CRD's
   defaults, unknown fields rejected) and its CEL rules (cel-python).
   examples/invalid/*.yaml must each be rejected, and the error must be the
   one its `# expect:` line names: a CEL message of the CRD, or the API
   server's wording of an OpenAPI constraint (Required value, Unsupported
   value, Too long, ...).
6. gitops/argocd/fixtures/*.json are ExternalKeyStores the CRD accepts
   (spec and status).
7. deploy/manifests/xks-operator.yaml (for kubectl users) is the current
   default render of the chart; deploy/iam-policy*.json grant exactly the
   documented actions (each named in docs/install.md), sts:AssumeRole only
   on listed role ARNs; deploy/*trust-policy.json are trust policies with
   exactly their expected principal, actions and condition keys.

8. Monitoring (opt-in): ci/values/monitoring*.yaml render the PrometheusRule
   and the Grafana dashboard ConfigMap, the default values neither. The
   PrometheusRule's groups equal ci/monitoring/xks-operator.rules.yaml (the
   plain rules file the promtool tests use, generated from the template);
   every alert has severity, summary, description and a runbook_url whose
   anchor is a section of docs/troubleshooting.md; the ConfigMap carries the
   sidecar label and the dashboard JSON verbatim, whose every PromQL
   expression parses (promtool) and queries only metrics of the contract,
   which docs/reference.md documents.

`--write-manifests` regenerates deploy/manifests/xks-operator.yaml instead.
`--write-rules` regenerates ci/monitoring/xks-operator.rules.yaml.
`--check-flags [BINARY]` checks that `BINARY run --help` knows every flag the
chart passes, and that `BINARY run` parses the chart's arguments of every
value set (ci/check-chart-flags.sh).

Prints one line per check and a closing "N passed, N failed" line; exits 1 on
any failure.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import sys
import traceback

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OPERATOR_CHART = os.path.join(ROOT, "charts", "xks-operator")
CRD_CHART = os.path.join(ROOT, "charts", "xks-operator-crds")
CRD_FILE = os.path.join(ROOT, "crds", "externalkeystores.xks-operator.io.yaml")
KUBE_VERSION = "1.33"
RELEASE = "xks"
NAMESPACE = "xks-system"

PASSED: list[str] = []
FAILED: list[str] = []


def check(name: str, fn, *args) -> None:
    try:
        fn(*args)
    except AssertionError as e:
        FAILED.append(name)
        print(f"FAIL {name}: {e}")
    except Exception as e:  # noqa: BLE001 - report any crash as a failure
        FAILED.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        traceback.print_exc(limit=3)
    else:
        PASSED.append(name)
        print(f"ok   {name}")


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def expect_line(path: str) -> str:
    with open(path) as f:
        first = f.readline().strip()
    m = re.match(r"^#\s*expect:\s*(.+)$", first)
    assert m, f"{rel(path)}: first line must be '# expect: <message substring>'"
    return m.group(1).strip()


# --------------------------------------------------------------------------
# Helm
# --------------------------------------------------------------------------

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402


def load_values(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(chart_dir: str, values: dict) -> list[dict]:
    with helm.Chart.load(chart_dir) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objs = []
    for tpl, text in sorted(out.items()):
        if tpl.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objs.append(doc)
    return objs


def lint_ok(chart_dir: str, values: dict) -> None:
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    # "icon is recommended" is info (1) and ignored.
    assert not report.get("errors") and not problems, json.dumps(report, indent=1)


def validate_k8s(objs: list[dict]) -> None:
    for o in objs:
        kind = o.get("kind")
        if kind == "ServiceMonitor":
            # No upstream schema for the Prometheus Operator's CRD in
            # kubernetes-validate: check its shape by hand.
            assert o["apiVersion"] == "monitoring.coreos.com/v1", o["apiVersion"]
            eps = o["spec"]["endpoints"]
            assert eps and all(e.get("port") == "http" for e in eps), eps
            assert o["spec"]["selector"]["matchLabels"], "ServiceMonitor needs a selector"
            continue
        if kind == "PrometheusRule":
            assert_prometheus_rule_shape(o)
            continue
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{kind}/{o['metadata'].get('name')}: {e.message}") from None


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objs: list[dict]) -> dict:
    dep = one(objs, "Deployment")
    cs = dep["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, "one container"
    return cs[0]


def flag(args: list[str], name: str) -> str | None:
    if name in args:
        i = args.index(name)
        return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
    return None


def flag_values(args: list[str], name: str) -> list[str]:
    """Every value of a repeatable flag, in order."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


# What the operator may do in each namespace it watches, and nothing else:
# (apiGroup, resource) -> verbs. Granted by a ClusterRole when watchNamespaces
# is empty, else by a Role in each listed namespace.
OPERATOR_RULES = {
    ("xks-operator.io", "externalkeystores"): {"get", "list", "watch", "patch", "update"},
    ("xks-operator.io", "externalkeystores/status"): {"get", "patch"},
    ("xks-operator.io", "externalkeystores/finalizers"): {"update"},
    ("", "secrets"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# The same rules as the chart writes them (templates/_helpers.tpl
# "xks-operator.operatorRules"): the ClusterRole as it always was, and every
# namespaced Role, carry exactly this list.
OPERATOR_RULE_LIST = [
    {"apiGroups": ["xks-operator.io"], "resources": ["externalkeystores"],
     "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": ["xks-operator.io"], "resources": ["externalkeystores/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["xks-operator.io"], "resources": ["externalkeystores/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
# Leader election, in the release namespace only.
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"}}
# The ClusterRoles for people (templates/user-roles.yaml), bound to nobody.
VIEWER_RULES = {
    ("xks-operator.io", "externalkeystores"): {"get", "list", "watch"},
    ("xks-operator.io", "externalkeystores/status"): {"get", "list", "watch"},
}
EDITOR_RULES = {
    ("xks-operator.io", "externalkeystores"):
        {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
    ("xks-operator.io", "externalkeystores/status"): {"get", "list", "watch"},
}
AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


def rules_of(role: dict) -> dict:
    """(apiGroup, resource) -> verbs of one Role or ClusterRole; no wildcards."""
    out: dict = {}
    for r in role.get("rules") or []:
        where = f"{role['kind']}/{role['metadata']['name']}: {r}"
        assert "*" not in r.get("verbs", []) and "*" not in r.get("resources", []), f"wildcard in {where}"
        assert "*" not in r.get("apiGroups", []) and not r.get("nonResourceURLs"), where
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def merge_rules(a: dict, b: dict) -> dict:
    out = {k: set(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, set()).update(v)
    return out


def operator_grants(objs: list[dict], sa: str) -> dict:
    """What the chart grants its ServiceAccount: "*" (cluster-wide) or a
    namespace -> (apiGroup, resource) -> verbs. Every binding must bind that
    ServiceAccount alone, to a role the chart renders."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    out: dict = {}
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        name = f"{b['kind']}/{b['metadata']['name']}"
        subj = b["subjects"]
        assert subj == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}], \
            f"{name} binds {subj}, want only ServiceAccount {NAMESPACE}/{sa}"
        ref = b["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io", f"{name}: {ref}"
        if b["kind"] == "ClusterRoleBinding":
            assert ref["kind"] == "ClusterRole", f"{name}: {ref}"
            scope, role = "*", roles.get(("ClusterRole", None, ref["name"]))
        else:
            scope = b["metadata"]["namespace"]
            ns = scope if ref["kind"] == "Role" else None
            role = roles.get((ref["kind"], ns, ref["name"]))
        assert role, f"{name} refers to {ref['kind']}/{ref['name']}, which the chart does not render"
        out[scope] = merge_rules(out.get(scope, {}), rules_of(role))
    return out


def assert_rbac(objs: list[dict], values: dict) -> None:
    """The operator gets exactly OPERATOR_RULES where it watches (cluster-wide,
    or in each of watchNamespaces), leases only in the release namespace and
    only with leader election, and nothing else; no ClusterRole but the
    cluster-wide operator's grants anything on Secrets."""
    dep = one(objs, "Deployment")
    fullname = dep["metadata"]["name"]
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    watch = values.get("watchNamespaces") or []
    leader = values.get("leaderElection", {}).get("enabled", False)
    grants = operator_grants(objs, sa)
    if not values.get("rbac", {}).get("create", True):
        assert not grants, f"rbac.create=false, yet the chart grants {grants}"
        return
    want: dict = {}
    if watch:
        for ns in watch:
            want[ns] = dict(OPERATOR_RULES)
    else:
        want["*"] = dict(OPERATOR_RULES)
    if leader:
        want[NAMESPACE] = merge_rules(want.get(NAMESPACE, {}), LEASE_RULES)
    assert set(grants) == set(want), \
        f"the operator is granted access in {sorted(grants)}, want {sorted(want)} (\"*\" = cluster-wide)"
    for scope, rules in grants.items():
        assert rules == want[scope], f"{scope}: the operator is granted {rules}, want {want[scope]}"
    # Its own roles carry the rule list verbatim (one comment per rule in the
    # template), in every namespace alike.
    own = [o for o in objs if o["kind"] in ("Role", "ClusterRole") and o["metadata"]["name"] == fullname]
    assert len(own) == (len(watch) if watch else 1), [f"{o['kind']}/{o['metadata'].get('namespace')}" for o in own]
    for o in own:
        assert o["kind"] == ("Role" if watch else "ClusterRole"), f"{o['kind']}/{fullname}"
        assert o["rules"] == OPERATOR_RULE_LIST, f"{o['kind']} {o['metadata'].get('namespace')}/{fullname}: {o['rules']}"
    for o in by_kind(objs, "ClusterRole"):
        if ("", "secrets") in rules_of(o):
            assert not watch and o["metadata"]["name"] == fullname, \
                f"ClusterRole/{o['metadata']['name']} grants Secrets cluster-wide (watchNamespaces={watch})"
    if watch:
        assert not by_kind(objs, "ClusterRoleBinding"), "watchNamespaces set, yet a ClusterRoleBinding is rendered"


def assert_user_roles(objs: list[dict], values: dict) -> None:
    """The viewer and editor ClusterRoles: exact rules, bound to nobody, and
    aggregation labels exactly as userRoles asks (view by default, edit and
    admin only on request)."""
    ur = values.get("userRoles", {})
    fullname = one(objs, "Deployment")["metadata"]["name"]
    names = {f"{fullname}-viewer": ("viewer", VIEWER_RULES), f"{fullname}-editor": ("editor", EDITOR_RULES)}
    found = {o["metadata"]["name"]: o for o in by_kind(objs, "ClusterRole") if o["metadata"]["name"] in names}
    others = [o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")
              if o["metadata"]["name"] not in names and o["metadata"]["name"] != fullname]
    assert not others, f"unexpected ClusterRoles {others}"
    if not ur.get("create", True):
        assert not found, f"userRoles.create=false, yet {sorted(found)} rendered"
        return
    assert set(found) == set(names), f"user roles rendered: {sorted(found)}"
    want_labels = {
        f"{fullname}-viewer": {"view"} if ur.get("aggregateToView", True) else set(),
        f"{fullname}-editor": {k for k, v in (("edit", ur.get("aggregateToEdit", False)),
                                              ("admin", ur.get("aggregateToAdmin", False))) if v},
    }
    for name, (what, rules) in names.items():
        role = found[name]
        assert rules_of(role) == rules, f"{what} role grants {rules_of(role)}, want {rules}"
        labels = role["metadata"].get("labels", {})
        agg = {k[len(AGGREGATE_TO):] for k in labels if k.startswith(AGGREGATE_TO)}
        assert agg == want_labels[name], f"{what} role is aggregated to {sorted(agg)}, want {sorted(want_labels[name])}"
        assert all(labels[AGGREGATE_TO + a] == "true" for a in agg), labels
        assert "aggregationRule" not in role, f"{what} role must not aggregate others"
    bound = [b["metadata"]["name"] for b in objs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and b["roleRef"]["name"] in names]
    assert not bound, f"the chart binds a user role: {bound}"


def assert_common(objs: list[dict], values: dict) -> None:
    c = container(objs)
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    psc, sc = pod["securityContext"], c["securityContext"]
    assert psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", psc
    assert sc.get("runAsNonRoot") is True, sc
    assert sc.get("readOnlyRootFilesystem") is True, sc
    assert sc.get("allowPrivilegeEscalation") is False, sc
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], sc
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", sc
    res = c["resources"]
    for k in ("cpu", "memory"):
        assert k in res["requests"] and k in res["limits"], res
    port = values.get("metricsPort", 8080)
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}], c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, c["livenessProbe"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}, c["readinessProbe"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", env
    args = c["args"]
    assert args[0] == "run", args
    assert flag(args, "--listen-addr") == f"0.0.0.0:{port}", args
    for f_ in ("--log-format", "--log-level", "--drift-interval", "--kms-rate-limit", "--concurrency"):
        assert flag(args, f_), f"missing {f_} in {args}"
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", flag(args, "--kms-rate-limit")), args
    assert re.fullmatch(r"[0-9]+", flag(args, "--concurrency")), args
    sa = pod["serviceAccountName"]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == sa for o in objs), f"no ServiceAccount {sa}"
    replicas = dep["spec"]["replicas"]
    pdbs = by_kind(objs, "PodDisruptionBudget")
    if replicas > 1:
        assert len(pdbs) == 1 and pdbs[0]["spec"] == {
            "maxUnavailable": 1,
            "selector": dep["spec"]["selector"],
        }, pdbs
    else:
        assert not pdbs, "a PodDisruptionBudget with one replica would block node drains"
    assert flag_values(args, "--watch-namespace") == (values.get("watchNamespaces") or []), args
    allow = values.get("roleAllowList") or {}
    want_allow = [f"{ns}={arn}" for ns in sorted(allow) for arn in allow[ns]]
    assert flag_values(args, "--allow-role") == want_allow, f"--allow-role {flag_values(args, '--allow-role')}, want {want_allow}"
    assert_rbac(objs, values)
    assert_user_roles(objs, values)
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"].get("namespace"), f"{o['kind']}/{o['metadata']['name']} has no namespace"


def expect_default(objs, values):
    args = container(objs)["args"]
    assert "--leader-election" not in args and flag(args, "--watch-namespace") is None, args
    assert "--allow-role" not in args, f"a role is allowed by default: {args}"
    assert flag(args, "--log-format") == "json" and flag(args, "--drift-interval") == "5m", args
    assert flag(args, "--kms-rate-limit") == "5" and flag(args, "--concurrency") == "4", args
    assert one(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert {o["kind"] for o in objs} == {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"}, {o["kind"] for o in objs}
    fullname = one(objs, "Deployment")["metadata"]["name"]
    crs = {o["metadata"]["name"]: o for o in by_kind(objs, "ClusterRole")}
    assert set(crs) == {fullname, f"{fullname}-viewer", f"{fullname}-editor"}, sorted(crs)
    # Cluster-wide, as before watchNamespaces: the ClusterRole with the
    # operator's rules, bound by a ClusterRoleBinding.
    assert crs[fullname]["rules"] == OPERATOR_RULE_LIST, crs[fullname]["rules"]
    assert one(objs, "ClusterRoleBinding")["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": fullname}
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding"), "no Lease access without leader election"
    labels = lambda n: crs[n]["metadata"]["labels"]  # noqa: E731
    assert labels(f"{fullname}-viewer").get(AGGREGATE_TO + "view") == "true", "viewer not aggregated to view"
    editor = labels(f"{fullname}-editor")
    assert AGGREGATE_TO + "edit" not in editor and AGGREGATE_TO + "admin" not in editor, editor


def expect_leader(objs, values):
    args = container(objs)["args"]
    assert "--leader-election" in args and flag(args, "--lease-name") == "xks-operator-leader", args
    assert one(objs, "Deployment")["spec"]["replicas"] == 2
    roles = [o for o in by_kind(objs, "Role") if o["metadata"]["name"].endswith("leader-election")]
    assert len(roles) == 1 and roles[0]["metadata"]["namespace"] == NAMESPACE, roles
    names = [r.get("resourceNames") for r in roles[0]["rules"] if "get" in r["verbs"]]
    assert names == [["xks-operator-leader"]], names
    assert one(objs, "PodDisruptionBudget")


def expect_watch_ns(objs, values):
    args = container(objs)["args"]
    assert "--watch-namespace team-a --watch-namespace team-b" in " ".join(args), args
    assert flag(args, "--log-format") == "text" and flag(args, "--drift-interval") == "90s", args
    fullname = one(objs, "Deployment")["metadata"]["name"]
    # No ClusterRole or ClusterRoleBinding for the operator; the only
    # ClusterRoles are the user roles, which grant nothing on Secrets.
    assert not by_kind(objs, "ClusterRoleBinding"), "namespaced RBAC only"
    assert sorted(o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")) == \
        [f"{fullname}-editor", f"{fullname}-viewer"], by_kind(objs, "ClusterRole")
    assert not [o for o in by_kind(objs, "ClusterRole") if ("", "secrets") in rules_of(o)]
    for kind in ("Role", "RoleBinding"):
        where = sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objs, kind))
        assert where == [("team-a", fullname), ("team-b", fullname)], f"{kind}s: {where}"
    for rb in by_kind(objs, "RoleBinding"):
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": fullname}, rb
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": NAMESPACE}], rb
    for role in by_kind(objs, "Role"):
        assert role["rules"] == OPERATOR_RULE_LIST, role


def expect_watch_ns_leader(objs, values):
    args = container(objs)["args"]
    assert flag_values(args, "--watch-namespace") == [NAMESPACE, "payments"], args
    assert "--leader-election" in args, args
    fullname = one(objs, "Deployment")["metadata"]["name"]
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"), \
        "no ClusterRole at all: namespaced operator, no user roles"
    roles = sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objs, "Role"))
    assert roles == [("payments", fullname), (NAMESPACE, fullname), (NAMESPACE, f"{fullname}-leader-election")], roles


def expect_role_allow_list(objs, values):
    """The admin's allow-list: one --allow-role per role, namespaces sorted,
    each namespace's roles in list order; nothing else changes (no RBAC for
    the roles: they are AWS's business)."""
    args = container(objs)["args"]
    assert flag_values(args, "--allow-role") == [
        "team-a=arn:aws:iam::444455556666:role/xks-operator",
        "team-a=arn:aws:iam::333344445555:role/platform/kms/xks-operator",
        "team-b=arn:aws:iam::222233334444:role/xks-operator",
    ], args
    i = args.index("--allow-role")
    assert args[i:i + 6:2] == ["--allow-role"] * 3, f"the --allow-role flags are not together: {args}"
    plain = render(OPERATOR_CHART, {k: v for k, v in values.items() if k != "roleAllowList"})
    without = lambda o: [x for x in o if x["kind"] != "Deployment"]  # noqa: E731
    assert without(objs) == without(plain), "roleAllowList changes objects other than the Deployment"
    dep, dep_plain = copy.deepcopy(one(objs, "Deployment")), one(plain, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a for j, a in enumerate(c["args"]) if a != "--allow-role" and c["args"][j - 1] != "--allow-role"]
    assert dep == dep_plain, "roleAllowList changes the Deployment beyond its --allow-role arguments"


def expect_user_roles_aggregated(objs, values):
    fullname = one(objs, "Deployment")["metadata"]["name"]
    crs = {o["metadata"]["name"]: o["metadata"]["labels"] for o in by_kind(objs, "ClusterRole")}
    editor, viewer = crs[f"{fullname}-editor"], crs[f"{fullname}-viewer"]
    assert editor.get(AGGREGATE_TO + "edit") == "true" and editor.get(AGGREGATE_TO + "admin") == "true", editor
    assert AGGREGATE_TO + "view" not in viewer, viewer


def expect_netpol_sm(objs, values):
    np_ = one(objs, "NetworkPolicy")
    eg = np_["spec"]["egress"]
    ports = [(p.get("port"), p.get("protocol")) for r in eg for p in r.get("ports", [])]
    for p in [(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")]:
        assert p in ports, f"egress lacks {p}: {ports}"
    assert np_["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}], np_["spec"]["ingress"]
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"].get("release") == "prometheus", sm["metadata"]


def expect_irsa(objs, values):
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::"), sa
    env = {e["name"]: e.get("value") for e in container(objs)["env"]}
    assert env.get("AWS_REGION") == "eu-west-1", env
    assert env.get("AWS_ENDPOINT_URL_KMS", "").startswith("https://"), env
    assert "@sha256:" in container(objs)["image"], container(objs)["image"]


# --------------------------------------------------------------------------
# Monitoring: the PrometheusRule and the Grafana dashboard (opt-in)
# --------------------------------------------------------------------------

import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "ci", "monitoring"))
import monitoring  # noqa: E402

RULES_FILE = monitoring.RULES_FILE
DASHBOARD_FILE = monitoring.DASHBOARD_FILE
TROUBLESHOOTING = os.path.join(ROOT, "docs", "troubleshooting.md")
DEFAULT_RUNBOOK = "https://github.com/xks-operator/xks-operator/blob/main/docs/troubleshooting.md"
RULES_HEADER = """# xks-operator's alert rules as a plain Prometheus rules file.
# GENERATED by `bash ci/monitoring/render-rules.sh` from
# charts/xks-operator/templates/prometheusrule.yaml (its spec.groups with the
# chart's default values): do not edit. ci/monitoring/tests/ test it with
# `promtool test rules`; Prometheus without the Prometheus Operator can load
# it as it is (rule_files).
"""
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def assert_prometheus_rule_shape(o: dict) -> None:
    """No upstream schema for the Prometheus Operator's PrometheusRule in
    kubernetes-validate: its shape (monitoring.coreos.com/v1) by hand."""
    assert o["apiVersion"] == "monitoring.coreos.com/v1", o["apiVersion"]
    assert set(o["spec"]) == {"groups"}, sorted(o["spec"])
    groups = o["spec"]["groups"]
    names = [g["name"] for g in groups]
    assert names and len(names) == len(set(names)), f"group names {names}"
    for g in groups:
        assert set(g) <= {"name", "interval", "rules", "partial_response_strategy", "limit"}, sorted(g)
        assert isinstance(g["rules"], list), f"group {g['name']}: rules must be a list"
        for r in g["rules"]:
            assert set(r) <= RULE_KEYS, f"{r.get('alert')}: unknown keys {sorted(set(r) - RULE_KEYS)}"
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and r["expr"].strip(), r
            if "for" in r:
                assert isinstance(r["for"], str) and PROM_DURATION.match(r["for"]), f"{r['alert']}: for {r['for']!r}"
            for k in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in (r.get(k) or {}).values()), f"{r.get('alert')}: {k} must be strings"


class _RulesDumper(yaml.SafeDumper):
    pass


def _str_literal(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_RulesDumper.add_representer(str, _str_literal)


def rules_text() -> str:
    """ci/monitoring/xks-operator.rules.yaml: the chart's rules, default values."""
    objs = render(OPERATOR_CHART, {"prometheusRule": {"enabled": True}})
    groups = one(objs, "PrometheusRule")["spec"]["groups"]
    return RULES_HEADER + yaml.dump({"groups": groups}, Dumper=_RulesDumper, sort_keys=False, width=120)


def rules_file_groups() -> list:
    with open(RULES_FILE) as f:
        return yaml.safe_load(f)["groups"]


def check_rules_file_current() -> None:
    with open(RULES_FILE) as f:
        current = f.read()
    assert current == rules_text(), \
        f"{rel(RULES_FILE)} is stale: run `bash ci/monitoring/render-rules.sh` and commit it"


def github_anchors(path: str) -> dict[str, int]:
    """Anchor -> line of every Markdown heading, as GitHub makes them
    (lower case, punctuation but - and _ dropped, spaces to -, -1 -2 ... for
    repeats), outside code fences."""
    out: dict[str, int] = {}
    fence = False
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            base = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            slug, i = base, 0
            while slug in out:
                i += 1
                slug = f"{base}-{i}"
            out[slug] = n
    return out


def alerts_of(groups: list) -> list[dict]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def assert_alert_annotations(groups: list, base: str, extra_labels: dict) -> None:
    """Every alert: a severity, summary, description, and a runbook_url =
    base#<alert name in lower case>; with the default base, that anchor is a
    heading of docs/troubleshooting.md."""
    anchors = github_anchors(TROUBLESHOOTING)
    names = [r["alert"] for r in alerts_of(groups)]
    assert len(names) == len(set(names)), f"duplicate alerts {names}"
    for r in alerts_of(groups):
        name, labels, ann = r["alert"], r.get("labels") or {}, r.get("annotations") or {}
        assert labels.get("severity"), f"{name}: no severity"
        for k, v in extra_labels.items():
            assert labels.get(k) == v, f"{name}: additionalRuleLabels {k}={v!r} missing: {labels}"
        missing = {"summary", "description", "runbook_url"} - set(ann)
        assert not missing, f"{name}: no {sorted(missing)}"
        assert all(ann[k].strip() for k in ("summary", "description")), f"{name}: empty annotation"
        want = f"{base}#{name.lower()}"
        assert ann["runbook_url"] == want, f"{name}: runbook_url {ann['runbook_url']!r}, want {want!r}"
        if base == DEFAULT_RUNBOOK:
            assert name.lower() in anchors, f"{name}: docs/troubleshooting.md has no heading for #{name.lower()}"


def dashboard_configmap(objs: list[dict]) -> dict:
    cms = [o for o in by_kind(objs, "ConfigMap") if "xks-operator.json" in (o.get("data") or {})]
    assert len(cms) == 1, f"expected one dashboard ConfigMap, got {len(cms)}"
    return cms[0]


def assert_dashboard_configmap(objs: list[dict], values: dict) -> None:
    gd = values.get("grafanaDashboard", {})
    cm = dashboard_configmap(objs)
    md = cm["metadata"]
    label, value = gd.get("label", "grafana_dashboard"), gd.get("labelValue", "1")
    assert md["labels"].get(label) == value, f"sidecar label {label}={value!r} missing: {md['labels']}"
    for k, v in (gd.get("labels") or {}).items():
        assert md["labels"].get(k) == v, md["labels"]
    assert md["namespace"] == (gd.get("namespace") or NAMESPACE), md["namespace"]
    ann = md.get("annotations") or {}
    if gd.get("folder"):
        assert ann.get(gd.get("folderAnnotation", "grafana_folder")) == gd["folder"], ann
    else:
        assert "grafana_folder" not in ann, ann
    assert list(cm["data"]) == ["xks-operator.json"], list(cm["data"])
    dash = json.loads(cm["data"]["xks-operator.json"])
    with open(DASHBOARD_FILE) as f:
        assert dash == json.load(f), f"the ConfigMap's dashboard differs from {rel(DASHBOARD_FILE)}"


def ensure_promtool() -> str:
    """promtool from Debian's prometheus package, installed when missing
    (as ci/monitoring/install-promtool.sh does for .ci/run)."""
    found = shutil.which("promtool")
    if not found:
        subprocess.run(["bash", os.path.join(ROOT, "ci", "monitoring", "install-promtool.sh")],
                       check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("promtool")
    assert found, "promtool is missing and could not be installed: run `bash ci/monitoring/install-promtool.sh` (as root)"
    return found


def promtool_check_rules(doc: dict) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f, sort_keys=False, width=1000)
        path = f.name
    try:
        out = subprocess.run([ensure_promtool(), "check", "rules", path], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    assert out.returncode == 0, (out.stdout + out.stderr).strip()[-2000:]


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms", "__range_ms"}


def check_dashboard_json() -> None:
    """The dashboard: valid JSON; a Prometheus datasource variable that every
    panel and query uses; namespace and store variables; unique panel ids;
    every $variable defined; every PromQL expression parses (promtool) and
    queries only metrics of the contract."""
    dash = monitoring.load_dashboard()
    assert dash.get("uid") and dash.get("title"), "uid and title"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    for name in ("namespace", "store"):
        assert variables.get(name, {}).get("type") == "query", f"no {name} variable"
    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    ids = []
    for p in monitoring.all_panels(dash):
        ids.append(p["id"])
        assert "gridPos" in p, f"panel {p['id']}: no gridPos"
        if p["type"] == "row":
            continue
        assert p.get("datasource") == want_ds, f"panel {p['id']} {p['title']!r}: datasource {p.get('datasource')}"
        assert p.get("targets"), f"panel {p['id']} {p['title']!r}: no query"
        for t in p["targets"]:
            assert t.get("datasource") == want_ds, f"panel {p['id']} target {t.get('refId')}: {t.get('datasource')}"
    for v in variables.values():
        if v["type"] == "query":
            assert v.get("datasource") == want_ds, f"variable {v['name']}: {v.get('datasource')}"
    assert len(ids) == len(set(ids)), f"duplicate panel ids {sorted(ids)}"
    exprs = monitoring.dashboard_exprs(dash)
    assert exprs, "no expressions"
    for where, e in exprs:
        used = {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", e)}
        unknown = used - set(variables) - GRAFANA_BUILTINS
        assert not unknown, f"{where}: undefined variables {sorted(unknown)}"
    promtool_check_rules(monitoring.dashboard_rules(dash))
    problems = monitoring.check_names()
    assert not problems, "; ".join(problems)


def expect_monitoring(objs, values):
    """Default thresholds: the PrometheusRule is exactly the rules file."""
    pr = one(objs, "PrometheusRule")
    assert pr["metadata"]["labels"].get("release") == "prometheus", pr["metadata"]["labels"]
    assert pr["metadata"]["namespace"] == NAMESPACE
    assert_alert_annotations(pr["spec"]["groups"], DEFAULT_RUNBOOK, {})
    assert pr["spec"]["groups"] == rules_file_groups(), \
        f"the PrometheusRule's groups differ from {rel(RULES_FILE)}: run `bash ci/monitoring/render-rules.sh`"
    assert_dashboard_configmap(objs, values)
    sm = one(objs, "ServiceMonitor")
    assert all(e.get("honorLabels") is True for e in sm["spec"]["endpoints"]), sm["spec"]["endpoints"]


def expect_monitoring_tuned(objs, values):
    """Thresholds, severities, labels and the runbook base from values."""
    pr = one(objs, "PrometheusRule")
    rules = {r["alert"]: r for r in alerts_of(pr["spec"]["groups"])}
    pv = values["prometheusRule"]
    assert_alert_annotations(pr["spec"]["groups"], pv["runbookBaseUrl"], pv["additionalRuleLabels"])
    assert "XksOperatorAbsent" not in rules, "operatorAbsent.enabled=false, yet the alert is rendered"
    assert len(rules) == len(alerts_of(rules_file_groups())) - 1, sorted(rules)
    assert rules["XksStoreNotConnected"]["for"] == "15m", rules["XksStoreNotConnected"]
    for name in ("XksStoreNotConnected", "XksStoreFailed"):
        assert "[30m]" in rules[name]["expr"] and "[10m]" not in rules[name]["expr"], rules[name]["expr"]
    assert rules["XksOperationFailed"]["labels"]["severity"] == "warning", rules["XksOperationFailed"]["labels"]
    e = rules["XksOperationRunningLong"]["expr"]
    assert ") > 3600" in e and "[3600s]" in e, e
    e = rules["XksKmsThrottling"]["expr"]
    assert "[30m])) > 0.2" in e, e
    assert pr["metadata"]["labels"].get("release") == "kube-prometheus-stack", pr["metadata"]["labels"]
    assert_dashboard_configmap(objs, values)
    promtool_check_rules({"groups": pr["spec"]["groups"]})


def expect_default_no_monitoring(objs, values):
    assert not by_kind(objs, "PrometheusRule"), "PrometheusRule rendered by default"
    assert not by_kind(objs, "ConfigMap"), "dashboard ConfigMap rendered by default"
    assert not by_kind(objs, "ServiceMonitor"), "ServiceMonitor rendered by default"


def check_default_renders_no_monitoring() -> None:
    expect_default_no_monitoring(render(OPERATOR_CHART, {}), {})


def check_troubleshooting_alerts() -> None:
    """docs/troubleshooting.md has a section per alert, under "## Alerts"."""
    with open(TROUBLESHOOTING) as f:
        doc = f.read()
    m = re.search(r"^## Alerts\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert m, "docs/troubleshooting.md has no '## Alerts' section"
    section = m.group(1)
    missing = [r["alert"] for r in alerts_of(rules_file_groups()) if f"\n### {r['alert']}\n" not in section]
    assert not missing, f"the Alerts section has no '### ' heading for {missing}"


def check_reference_metrics() -> None:
    """docs/reference.md's Metrics section names every metric of the contract."""
    with open(os.path.join(ROOT, "docs", "reference.md")) as f:
        doc = f.read()
    m = re.search(r"^## Metrics\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert m, "docs/reference.md has no '## Metrics' section"
    section = m.group(1)
    missing = [f for f in monitoring.CONTRACT if f"`{monitoring.samples_of(f)[0].removesuffix('_bucket')}`" not in section]
    assert not missing, f"the Metrics section does not document {missing}"


EXPECTATIONS = {
    None: expect_default,
    "leader-election-2-replicas.yaml": expect_leader,
    "watch-namespace.yaml": expect_watch_ns,
    "watch-namespaces-leader-election.yaml": expect_watch_ns_leader,
    "user-roles-aggregated.yaml": expect_user_roles_aggregated,
    "role-allow-list.yaml": expect_role_allow_list,
    "networkpolicy-servicemonitor.yaml": expect_netpol_sm,
    "irsa.yaml": expect_irsa,
    "monitoring.yaml": expect_monitoring,
    "monitoring-tuned.yaml": expect_monitoring_tuned,
}


def good_value_files() -> list[str | None]:
    files = sorted(f for f in glob.glob(os.path.join(ROOT, "ci", "values", "*.yaml"))
                   if not os.path.basename(f).startswith("bad-"))
    return [None] + files


def check_operator_values(path: str | None) -> None:
    values = load_values(path)
    lint_ok(OPERATOR_CHART, values)
    objs = render(OPERATOR_CHART, values)
    validate_k8s(objs)
    assert_common(objs, values)
    extra = EXPECTATIONS.get(os.path.basename(path) if path else None)
    if extra:
        extra(objs, values)


def check_bad_values(path: str) -> None:
    want = expect_line(path)
    values = load_values(path)
    try:
        render(OPERATOR_CHART, values)
    except helm.HelmError as e:
        msg = str(e)
        assert want in msg, f"rejected, but the message lacks {want!r}: {msg}"
        return
    raise AssertionError("rendered, but must be rejected")


def crd_without_helm_metadata(crd: dict) -> dict:
    c = copy.deepcopy(crd)
    c["metadata"].pop("labels", None)
    c["metadata"].pop("annotations", None)
    return c


def check_crd_chart() -> None:
    lint_ok(CRD_CHART, {})
    objs = render(CRD_CHART, {})
    assert len(objs) == 1 and objs[0]["kind"] == "CustomResourceDefinition", [o.get("kind") for o in objs]
    validate_k8s(objs)
    crd = objs[0]
    assert crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", crd["metadata"]
    with open(CRD_FILE) as f:
        source = yaml.safe_load(f)
    assert crd_without_helm_metadata(crd) == crd_without_helm_metadata(source), \
        "the CRD chart renders something other than crds/externalkeystores.xks-operator.io.yaml"
    assert "helm.sh/resource-policy" not in render(CRD_CHART, {"keep": False})[0]["metadata"].get("annotations", {})


# --------------------------------------------------------------------------
# Examples: OpenAPI (jsonschema) + CEL
# --------------------------------------------------------------------------

import celpy  # noqa: E402
import jsonschema  # noqa: E402


def crd_schema() -> dict:
    with open(CRD_FILE) as f:
        crd = yaml.safe_load(f)
    versions = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return versions[0]["schema"]["openAPIV3Schema"]


def to_jsonschema(s: dict, top: bool = True) -> dict:
    """openAPIV3Schema -> JSON Schema: nullable, no x-kubernetes-*, and unknown
    fields rejected (what `kubectl apply` with strict field validation does)."""
    out = {}
    for k, v in s.items():
        if k.startswith("x-kubernetes-") or k in ("nullable", "description", "default", "format"):
            continue
        if k == "properties":
            out[k] = {pk: to_jsonschema(pv, False) for pk, pv in v.items()}
        elif k == "items":
            out[k] = to_jsonschema(v, False)
        elif k == "additionalProperties" and isinstance(v, dict):
            out[k] = to_jsonschema(v, False)
        else:
            out[k] = v
    if "properties" in s and "additionalProperties" not in s:
        out["additionalProperties"] = False
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if top:
        out.setdefault("properties", {})
        out["properties"]["apiVersion"] = {"const": "xks-operator.io/v1alpha1"}
        out["properties"]["kind"] = {"const": "ExternalKeyStore"}
        out["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    return out


def apply_defaults(schema: dict, value):
    """Structural defaulting as the API server does before validation."""
    if isinstance(value, dict) and "properties" in schema:
        for k, sub in schema["properties"].items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
            if k in value:
                value[k] = apply_defaults(sub, value[k])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


CEL_ENV = celpy.Environment()


def cel_errors(schema: dict, value, path: str) -> list[str]:
    """Evaluate every x-kubernetes-validations rule (except transition rules,
    which need oldSelf) at each node that is present."""
    errs = []
    if value is None:
        return errs
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        prog = CEL_ENV.program(CEL_ENV.compile(rule["rule"]))
        result = prog.evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType) or not bool(result):
            errs.append(f"{path}: Invalid value: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errs += cel_errors(sub, value[k], f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += cel_errors(schema["items"], v, f"{path}[{i}]")
    return errs


# How the API server words an OpenAPI failure -> the jsonschema validator.
APISERVER_WORDING = {
    "Required value": "required",
    "Unsupported value": "enum",
    "Too long": "maxLength",
    "should be at least": "minLength",
    "must be of type": "type",
    "should match": "pattern",
}


def schema_errors(value: dict) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft7Validator(to_jsonschema(crd_schema()))
    return list(validator.iter_errors(value))


def apiserver_path(err: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "required":
        m = re.match(r"'([^']+)' is a required property", err.message)
        parts.append(m.group(1) if m else "?")
    return ".".join(parts)


def validate_xks(doc: dict) -> tuple[list[jsonschema.ValidationError], list[str]]:
    schema = crd_schema()
    doc = apply_defaults(schema, copy.deepcopy(doc))
    s_errs = schema_errors(doc)
    c_errs = [] if s_errs else cel_errors(schema, doc, "")
    return s_errs, c_errs


def load_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_valid_example(path: str) -> None:
    docs = load_docs(path)
    assert docs, "empty"
    for d in docs:
        kind = d.get("kind")
        if kind == "Secret":
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
            data = d.get("stringData", {})
            assert re.fullmatch(r"[A-Z2-7]{20,30}", data.get("accessKeyId", "")), "accessKeyId breaks KMS rules"
            assert re.fullmatch(r"[A-Za-z0-9/+=]{43,64}", data.get("secretAccessKey", "")), "secretAccessKey breaks KMS rules"
        elif kind == "ExternalKeyStore":
            s_errs, c_errs = validate_xks(d)
            assert not s_errs and not c_errs, "; ".join([e.message for e in s_errs] + c_errs)
        else:
            raise AssertionError(f"unexpected kind {kind}")


def check_invalid_example(path: str) -> None:
    want = expect_line(path)
    docs = load_docs(path)
    assert len(docs) == 1 and docs[0].get("kind") in ("ExternalKeyStore", "Secret"), "one ExternalKeyStore or Secret"
    s_errs, c_errs = validate_xks(docs[0])
    assert s_errs or c_errs, "accepted, but must be rejected"
    assert len(s_errs) + len(c_errs) == 1, "more than one error: " + "; ".join([e.message for e in s_errs] + c_errs)
    if c_errs:
        assert want in c_errs[0], f"CEL rejects it with {c_errs[0]!r}, not {want!r}"
        return
    err = s_errs[0]
    words = [w for w in APISERVER_WORDING if w in want]
    assert words, f"{want!r} is neither a CEL message (schema rejects it: {err.message}) nor API server wording {list(APISERVER_WORDING)}"
    assert err.validator == APISERVER_WORDING[words[0]], \
        f"expected a {APISERVER_WORDING[words[0]]} failure, got {err.validator}: {err.message}"
    # The API server names the field: "spec.proxy.uriPath: Required value".
    field = apiserver_path(err)
    m = re.match(r"^([A-Za-z0-9_.\[\]]+): ", want)
    if m:
        assert m.group(1) == field, f"the error is at {field}, the expect line names {m.group(1)}"
    # Unsupported value: "X" names the offending value.
    m = re.search(r'Unsupported value: "([^"]*)"', want)
    if m:
        assert err.instance == m.group(1), f"offending value is {err.instance!r}"


def check_argocd_fixture(path: str) -> None:
    """The Argo CD health fixtures must be objects the CRD accepts (spec and
    status), so they track the real status shape."""
    with open(path) as f:
        doc = json.load(f)
    s_errs, c_errs = validate_xks(doc)
    assert not s_errs and not c_errs, "; ".join([f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in s_errs] + c_errs)


MANIFESTS = os.path.join(ROOT, "deploy", "manifests", "xks-operator.yaml")
MANIFESTS_HEADER = """# xks-operator for `kubectl apply` (no Helm): the operator chart rendered with
# its default values, release "xks-operator" in namespace xks-system.
# GENERATED by `ci/render-manifests.sh` from charts/xks-operator: do not edit.
# Install the CRD first: kubectl apply --server-side -f crds/externalkeystores.xks-operator.io.yaml
"""


def static_manifests() -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "xks-system", "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}]
    with helm.Chart.load(OPERATOR_CHART) as chart:
        out = chart.render({}, name="xks-operator", namespace="xks-system", is_install=True)
    for tpl, text in sorted(out.items()):
        if tpl.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return MANIFESTS_HEADER + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


def check_static_manifests() -> None:
    with open(MANIFESTS) as f:
        current = f.read()
    assert current == static_manifests(), \
        f"{rel(MANIFESTS)} is stale: run ci/render-manifests.sh and commit it"
    objs = [d for d in yaml.safe_load_all(current) if d]
    validate_k8s(objs)
    assert_common([o for o in objs if o["kind"] != "Namespace"] , {})


IAM_ACTIONS = {
    # The KMS permissions: of the operator's own role, and of every role in
    # another account it assumes (docs/install.md).
    "iam-policy.json": {
        "kms:CreateCustomKeyStore", "kms:DescribeCustomKeyStores", "kms:UpdateCustomKeyStore",
        "kms:ConnectCustomKeyStore", "kms:DisconnectCustomKeyStore", "kms:DeleteCustomKeyStore",
        "kms:ListKeys", "kms:DescribeKey",
    },
    "iam-policy-cross-account-vpc-endpoint-service.json": {"ec2:DescribeVpcEndpointServices"},
    # The operator's own role, to assume the roles of roleAllowList.
    "iam-policy-assume-role.json": {"sts:AssumeRole"},
}
# The chart's schema pattern of an allowed role (values.schema.json).
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/([\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
OPERATOR_ROLE_ARN = "arn:aws:iam::111122223333:role/xks-operator"
# Trust policies: file -> (principal type, actions, condition keys allowed
# (a suffix for the OIDC provider's keys)).
TRUST_POLICIES = {
    "irsa-trust-policy.json": ("Federated", {"sts:AssumeRoleWithWebIdentity"}, {":sub", ":aud"}),
    "pod-identity-trust-policy.json": ("Service", {"sts:AssumeRole", "sts:TagSession"}, set()),
    # The role in another account: trusts the operator's role alone, with the
    # optional external id (docs/install.md, "Stores in other AWS accounts").
    "role-trust-policy.json": ("AWS", {"sts:AssumeRole"}, {"sts:ExternalId"}),
}


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def install_doc() -> str:
    with open(os.path.join(ROOT, "docs", "install.md")) as f:
        return f.read()


def check_iam_policies() -> None:
    found = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "deploy", "iam-policy*.json"))}
    assert found == set(IAM_ACTIONS), \
        f"deploy/iam-policy*.json: {sorted(found)}, but ci/check_chart.py knows the actions of {sorted(IAM_ACTIONS)}"
    for name, want in IAM_ACTIONS.items():
        with open(os.path.join(ROOT, "deploy", name)) as f:
            pol = json.load(f)
        assert pol["Version"] == "2012-10-17", name
        assert f"(../deploy/{name})" in install_doc(), f"docs/install.md does not link deploy/{name}"
        got = set()
        for st in pol["Statement"]:
            assert st["Effect"] == "Allow" and st.get("Sid"), f"{name}: {st}"
            assert not {"Principal", "NotPrincipal", "NotAction", "NotResource"} & set(st), f"{name}: {st}"
            acts = as_list(st["Action"])
            assert all("*" not in a for a in acts), f"{name}: wildcard action {acts}"
            if any(a.startswith("sts:") for a in acts):
                # Only the listed roles: no "*", no wildcard account or name.
                res = as_list(st["Resource"])
                bad = [r for r in res if not ROLE_ARN.match(r)]
                assert res and not bad, f"{name}: {st['Sid']} must name role ARNs exactly, not {bad or res}"
            got.update(acts)
        assert got == want, f"{name}: actions {sorted(got)} != {sorted(want)}"
        undocumented = [a for a in sorted(got) if f"`{a}`" not in install_doc()]
        assert not undocumented, f"{name}: docs/install.md does not name {undocumented}"


def check_trust_policies() -> None:
    found = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "deploy", "*trust-policy.json"))}
    assert found == set(TRUST_POLICIES), \
        f"deploy/*trust-policy.json: {sorted(found)}, but ci/check_chart.py knows {sorted(TRUST_POLICIES)}"
    for name, (kind, want, keys) in TRUST_POLICIES.items():
        with open(os.path.join(ROOT, "deploy", name)) as f:
            pol = json.load(f)
        assert pol["Version"] == "2012-10-17", name
        assert f"(../deploy/{name})" in install_doc(), f"docs/install.md does not link deploy/{name}"
        got = set()
        for st in pol["Statement"]:
            assert st["Effect"] == "Allow" and st.get("Sid"), f"{name}: {st}"
            assert "Resource" not in st and "NotPrincipal" not in st, f"{name}: not a trust policy: {st}"
            assert set(st["Principal"]) == {kind}, f"{name}: principal {st['Principal']}, want one {kind}"
            principals = as_list(st["Principal"][kind])
            assert "*" not in principals, f"{name}: trusts everyone"
            if kind == "AWS":
                # The operator's role itself, not its account's root (which
                # would trust every principal of the account that IAM lets
                # call sts:AssumeRole).
                assert principals == [OPERATOR_ROLE_ARN], f"{name}: trusts {principals}, want [{OPERATOR_ROLE_ARN}]"
            acts = as_list(st["Action"])
            assert all("*" not in a for a in acts), f"{name}: wildcard action {acts}"
            got.update(acts)
            for op, cond in (st.get("Condition") or {}).items():
                for key in cond:
                    assert any(key == k or (k.startswith(":") and key.endswith(k)) for k in keys), \
                        f"{name}: condition key {key} ({op}) is not one of {sorted(keys)}"
                    if key == "sts:ExternalId":
                        assert op == "StringEquals" and isinstance(cond[key], str) and \
                            re.fullmatch(r"[\w+=,.@:/-]{2,1224}", cond[key]), f"{name}: {op} {cond}"
        assert got == want, f"{name}: actions {sorted(got)} != {sorted(want)}"


def crd_field_paths(schema: dict, prefix: str) -> list[str]:
    out = []
    for k, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{k}" if prefix else k
        if sub.get("type") == "array" and "items" in sub:
            out.append(path)
            out += crd_field_paths(sub["items"], path + "[]")
        else:
            out.append(path)
            out += crd_field_paths(sub, path)
    return out


def check_reference_doc() -> None:
    with open(os.path.join(ROOT, "docs", "reference.md")) as f:
        doc = f.read()
    schema = crd_schema()
    paths = [p for p in crd_field_paths(schema, "") if p.startswith(("spec.", "status."))]
    missing = [p for p in paths if f"`{p}`" not in doc]
    assert not missing, f"docs/reference.md does not document: {missing}"


CONNECTION_ERROR_CODES = [
    "INTERNAL_ERROR", "NETWORK_ERRORS", "INVALID_CREDENTIALS", "XKS_PROXY_ACCESS_DENIED",
    "XKS_PROXY_INVALID_CONFIGURATION", "XKS_PROXY_INVALID_RESPONSE", "XKS_PROXY_INVALID_TLS_CONFIGURATION",
    "XKS_PROXY_NOT_REACHABLE", "XKS_PROXY_TIMED_OUT", "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION",
    "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND",
]


def check_troubleshooting_doc() -> None:
    with open(os.path.join(ROOT, "docs", "troubleshooting.md")) as f:
        doc = f.read()
    missing = [c for c in CONNECTION_ERROR_CODES if f"\n### {c}\n" not in doc]
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"


def check_gitops_doc() -> None:
    """The argocd-cm snippet in docs/gitops.md carries health.lua verbatim."""
    with open(os.path.join(ROOT, "docs", "gitops.md")) as f:
        doc = f.read()
    with open(os.path.join(ROOT, "gitops", "argocd", "health.lua")) as f:
        lua = f.read()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    cms = [yaml.safe_load(b) for b in blocks if "kind: ConfigMap" in b]
    assert len(cms) == 1, f"expected one argocd-cm ConfigMap block, found {len(cms)}"
    body = cms[0]["data"]["resource.customizations.health.xks-operator.io_ExternalKeyStore"]
    assert body == lua, "the argocd-cm snippet in docs/gitops.md differs from gitops/argocd/health.lua"
    kubernetes_validate.validate(cms[0], KUBE_VERSION, strict=True)


def check_flux_exprs() -> None:
    """The Flux healthCheckExprs in docs/gitops.md, evaluated like
    kustomize-controller (inProgress, then failed, then current, else keep
    waiting) on every Argo CD fixture, give the `flux` result expected.json
    names."""
    with open(os.path.join(ROOT, "docs", "gitops.md")) as f:
        doc = f.read()
    ks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "kind: Kustomization" in b]
    assert len(ks) == 1, "expected one Kustomization block"
    with open(os.path.join(ROOT, "gitops", "flux", "key-stores-kustomization.yaml")) as f:
        assert yaml.safe_load(f) == ks[0], "gitops/flux/key-stores-kustomization.yaml differs from docs/gitops.md"
    exprs = [e for e in ks[0]["spec"]["healthCheckExprs"] if e["kind"] == "ExternalKeyStore"]
    assert len(exprs) == 1 and exprs[0]["apiVersion"] == "xks-operator.io/v1alpha1", exprs
    progs = {k: CEL_ENV.program(CEL_ENV.compile(exprs[0][k])) for k in ("inProgress", "failed", "current")}
    fixtures_dir = os.path.join(ROOT, "gitops", "argocd", "fixtures")
    with open(os.path.join(fixtures_dir, "expected.json")) as f:
        expected = json.load(f)
    wrong = []
    for name, want in sorted(expected.items()):
        with open(os.path.join(fixtures_dir, name)) as f:
            obj = json.load(f)
        act = {k: celpy.json_to_cel(obj[k]) for k in ("metadata", "spec", "status") if k in obj}
        got = "InProgress"
        for key, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
            value = progs[key].evaluate(act)
            assert isinstance(value, celpy.celtypes.BoolType), f"{name}: {key} gave {value!r}"
            if bool(value):
                got = result
                break
        if got != want.get("flux"):
            wrong.append(f"{name}: {got}, want {want.get('flux')}")
    assert not wrong, "; ".join(wrong)


def check_flags_against_binary(binary: str) -> int:
    """Every flag the chart passes to `xks-operator run` (for every value set)
    must appear in `xks-operator run --help`, and the chart's whole argument
    list must get past run's parser: `BINARY run ARGS... --help` exits 0
    (clap rejects an unknown flag, or a single-value flag given twice such as
    a repeated --watch-namespace, before it reaches --help)."""
    import subprocess
    flags: set[str] = set()
    arg_sets: list[tuple[str, list[str]]] = []
    for path in good_value_files():
        objs = render(OPERATOR_CHART, load_values(path))
        args = container(objs)["args"]
        assert args[0] == "run"
        flags.update(a for a in args if a.startswith("--"))
        arg_sets.append((rel(path) if path else "default values", args))
    out = subprocess.run([binary, "run", "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        print(f"check-chart-flags: FAIL `{binary} run --help` exited {out.returncode}: {out.stderr.strip()[:300]}")
        return 1
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![A-Za-z0-9-])", out.stdout))
    for f in sorted(flags):
        print(f"{'FAIL' if f in missing else 'ok  '} run {f}")
    rejected = []
    for name, args in arg_sets:
        res = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=60)
        ok = res.returncode == 0
        if not ok:
            rejected.append(name)
        first = (res.stderr.strip().splitlines() or [""])[0]
        print(f"{'ok  ' if ok else 'FAIL'} run parses the args of {name}" + ("" if ok else f": {first[:200]}"))
    total = len(flags) + len(arg_sets)
    failed = len(missing) + len(rejected)
    print(f"check-chart-flags: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    if "--check-flags" in sys.argv:
        i = sys.argv.index("--check-flags")
        binary = sys.argv[i + 1] if i + 1 < len(sys.argv) else os.path.join(ROOT, "target", "debug", "xks-operator")
        return check_flags_against_binary(binary)
    if "--write-rules" in sys.argv:
        with open(RULES_FILE, "w") as f:
            f.write(rules_text())
        print(f"wrote {rel(RULES_FILE)}")
        return 0
    if "--write-manifests" in sys.argv:
        os.makedirs(os.path.dirname(MANIFESTS), exist_ok=True)
        with open(MANIFESTS, "w") as f:
            f.write(static_manifests())
        print(f"wrote {rel(MANIFESTS)}")
        return 0
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {KUBE_VERSION}, CRD {rel(CRD_FILE)}")
    for path in good_value_files():
        name = rel(path) if path else "default values"
        check(f"chart xks-operator: lint+render+validate ({name})", check_operator_values, path)
    bad = sorted(glob.glob(os.path.join(ROOT, "ci", "values", "bad-*.yaml")))
    assert bad, "no ci/values/bad-*.yaml"
    for path in bad:
        check(f"chart xks-operator: rejects {rel(path)}", check_bad_values, path)
    check("deploy/manifests/xks-operator.yaml is the chart's default render", check_static_manifests)
    check("chart xks-operator: default values render no PrometheusRule, dashboard or ServiceMonitor",
          check_default_renders_no_monitoring)
    check(f"{rel(RULES_FILE)} is the PrometheusRule's current default render", check_rules_file_current)
    check(f"{rel(DASHBOARD_FILE)}: valid, datasource + variables, every PromQL expression parses",
          check_dashboard_json)
    check("docs/troubleshooting.md has a runbook section per alert (## Alerts)", check_troubleshooting_alerts)
    check("docs/reference.md documents every metric of the contract (## Metrics)", check_reference_metrics)
    check("docs/reference.md names every spec and status field of the CRD", check_reference_doc)
    check("docs/troubleshooting.md covers every KMS ConnectionErrorCode", check_troubleshooting_doc)
    check("docs/gitops.md argocd-cm snippet equals gitops/argocd/health.lua", check_gitops_doc)
    check("docs/gitops.md Flux healthCheckExprs judge every fixture as expected", check_flux_exprs)
    check("deploy/iam-policy*.json grant exactly the documented actions", check_iam_policies)
    check("deploy/*trust-policy.json trust exactly the documented principals", check_trust_policies)
    check("chart xks-operator-crds: lint+render, equals crds/, keep annotation", check_crd_chart)
    examples = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
    invalid = sorted(glob.glob(os.path.join(ROOT, "examples", "invalid", "*.yaml")))
    for path in examples:
        check(f"example valid: {rel(path)}", check_valid_example, path)
    for path in invalid:
        check(f"example rejected as expected: {rel(path)}", check_invalid_example, path)
    fixtures = sorted(f for f in glob.glob(os.path.join(ROOT, "gitops", "argocd", "fixtures", "*.json"))
                      if not f.endswith("expected.json"))
    for path in fixtures:
        check(f"argocd fixture matches the CRD: {rel(path)}", check_argocd_fixture, path)
    if len(invalid) < 12:
        FAILED.append("at least 12 invalid examples")
        print(f"FAIL at least 12 invalid examples (found {len(invalid)})")
    print(f"check-chart: {len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())

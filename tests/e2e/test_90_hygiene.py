"""What must hold over the whole run (this file runs last): no secret
anywhere a user or a log collector sees, no request the chart's RBAC
forbids, and `helm uninstall` keeping the CRD and the resources."""

from __future__ import annotations

import base64
import json
import re

import pytest

from conftest import CRD_NAMESPACE, CRD_RELEASE, FINDINGS, helm_uninstall, wait_ready
from harness import audit_events, store


def secret_forms(cred) -> list[str]:
    s = cred.secret_access_key
    return [s, base64.b64encode(s.encode()).decode()]


def test_no_secret_in_events_logs_status_or_metrics(kubectl, operator, installs, cred, ns, fresh_host):
    # A resource of its own, so each place below has something in it.
    kubectl.apply(store(ns, "hygiene", fresh_host()))
    wait_ready(kubectl, ns, "hygiene")
    places = {
        "status": kubectl.run("get", "xks", "-A", "-o", "json").stdout,
        "events": kubectl.run("get", "events.events.k8s.io", "-A", "-o", "json").stdout,
        "operator logs": installs.logs(),
        "/metrics": "".join(installs.all_metrics + [operator.metrics(r) for r in operator.running()]),
    }
    # Each place holds what it should (a check of an empty place proves nothing).
    assert '"keyStoreId"' in places["status"]
    ours = [e for e in json.loads(places["events"])["items"] if e.get("reportingController", "").startswith("xks-operator")]
    assert ours, "no Event from the operator"
    assert "became the leader" in places["operator logs"]
    assert re.search(r"^xks_operator_\w+", places["/metrics"], re.M), places["/metrics"][:500]
    for where, text in places.items():
        for form in secret_forms(cred):
            assert form not in text, f"the proxy secret appears in {where}"


def forbidden_lines(logs: str) -> list[str]:
    # RBAC's wording: `... is forbidden: User "system:serviceaccount:..." cannot list resource ...`
    return [line for line in logs.splitlines() if re.search(r'forbidden: User "[^"]+" cannot', line)]


def test_no_rbac_forbidden_in_the_operator_logs(installs, operator):
    logs = installs.logs()
    assert logs.strip()
    assert not forbidden_lines(logs), "\n".join(forbidden_lines(logs)[:10])


def test_no_rbac_forbidden_in_the_audit_log(installs, operator, audit_log):
    if not audit_log:
        pytest.skip("no audit log of this API server (KUBECONFIG cluster without XKS_E2E_AUDIT_LOG): "
                    "only the operator logs were checked")
    users = installs.all_users
    mine = [e for e in audit_events(audit_log) if e.get("user", {}).get("username") in users]
    assert mine, f"no request of {sorted(users)} in the audit log"
    denied = [e for e in mine
              if e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"]
    summary = [f"{e['user']['username']} {e['verb']} {e.get('objectRef', {})} -> {e.get('responseStatus', {}).get('code')}"
               for e in denied[:10]]
    assert not denied, "RBAC denied the operator:\n" + "\n".join(summary)
    # Other 403s (e.g. an Event in a terminating namespace) are not RBAC's;
    # they are listed for the record.
    other = [e for e in mine if e.get("responseStatus", {}).get("code") == 403]
    FINDINGS.append(f"audit log: {len(mine)} requests of the operator's ServiceAccounts, none denied by RBAC; "
                    f"{len(other)} other 403s: "
                    f"{sorted({(e['verb'], e.get('objectRef', {}).get('resource')) for e in other})}")


def test_helm_uninstall_keeps_the_crd_and_the_resources(kubectl, kubeconfig, installs, make_namespace, fresh_host):
    ns = make_namespace("uninstall")
    installs.switch("cluster-wide")
    kubectl.apply(store(ns, "survivor", fresh_host()))
    before = wait_ready(kubectl, ns, "survivor")
    installs.stop_operators()
    installs.uninstall()
    helm_uninstall(kubeconfig, CRD_RELEASE, CRD_NAMESPACE)
    assert not kubectl.json("get", "secrets", "-A", "-l", "owner=helm")["items"], "a Helm release is left"
    crd = kubectl.get("crd", "externalkeystores.xks-operator.io")
    assert crd, "helm uninstall removed the CRD"
    assert crd["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", crd["metadata"]
    after = kubectl.xks(ns, "survivor")
    assert after and after["metadata"]["uid"] == before["metadata"]["uid"], "the resource did not survive"
    assert after["status"]["keyStoreId"] == before["status"]["keyStoreId"]
    # No operator is left to release its finalizer: do it by hand so the
    # namespace can go.
    kubectl.run("patch", "xks", "survivor", "-n", ns, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}')

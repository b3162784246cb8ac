"""Issue 10, namespaced install (`watchNamespaces: [team-a, team-b]`): the
operator reads Secrets in those namespaces only, and everything else works."""

from __future__ import annotations

import time

import pytest

from claims import run_claim_scenarios
from conftest import FINDINGS, wait_ready
from harness import eventually, secret, store

def can_i(kubectl, user: str, *args: str) -> str:
    proc = kubectl.run("auth", "can-i", *args, f"--as={user}", check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def teams(kubectl, namespaced_operator, cred):
    for ns in ("team-a", "team-b"):
        kubectl.apply(secret(ns, cred))
    yield "team-a", "team-b"
    # The namespaces hold the chart's Roles: delete the resources, not them.
    for ns in ("team-a", "team-b"):
        kubectl.delete("xks", "--all", "-n", ns, timeout=90)


def test_the_operator_cannot_read_secrets_outside_its_namespaces(kubectl, namespaced_operator):
    user = namespaced_operator.user
    assert can_i(kubectl, user, "get", "secrets", "-n", "kube-system") == "no"
    assert can_i(kubectl, user, "list", "secrets", "--all-namespaces") == "no"
    assert can_i(kubectl, user, "list", "externalkeystores.xks-operator.io", "--all-namespaces") == "no"
    # ...and can where it works.
    for ns in ("team-a", "team-b"):
        assert can_i(kubectl, user, "get", "secrets", "-n", ns) == "yes"
        assert can_i(kubectl, user, "patch", "externalkeystores.xks-operator.io", "--subresource=status", "-n", ns) == "yes"


def test_resources_in_watched_namespaces_become_ready_others_are_left_alone(
        kubectl, namespaced_operator, emulator, teams, make_namespace, fresh_host):
    team_a, _ = teams
    outside = make_namespace("unwatched")
    kubectl.apply(store(team_a, "tenant", fresh_host()), store(outside, "ignored", fresh_host()))
    obj = wait_ready(kubectl, team_a, "tenant")
    assert emulator.the_store("tenant")["ConnectionState"] == "CONNECTED"
    assert obj["status"]["keyStoreId"]
    time.sleep(3)
    ignored = kubectl.xks(outside, "ignored")
    assert not ignored.get("status") and not ignored["metadata"].get("finalizers"), ignored
    assert emulator.stores("ignored") == []


def test_claims_namespaced(kubectl, namespaced_operator, emulator, teams, fresh_host):
    result = run_claim_scenarios(kubectl, emulator, *teams, [fresh_host(), fresh_host(), fresh_host()], "ns")
    FINDINGS.append(f"claims, namespaced: the next resource took over {result['takeover_seconds']}s after the "
                    "holder was deleted")


def test_roles_for_people(kubectl, namespaced_operator, make_namespace):
    """Issue 10 item 3: `view` may read key stores (aggregated), `edit` may
    not write them unless the chart says so, the chart's editor role may."""
    ns = make_namespace("people", with_secret=False)
    for user, role in (("viewer@example.com", "view"), ("editor@example.com", "edit"),
                       ("xks-admin@example.com", "xks-operator-editor")):
        kubectl.run("create", "rolebinding", user.split("@")[0], "-n", ns, f"--clusterrole={role}", f"--user={user}")
    xks = "externalkeystores.xks-operator.io"
    # Aggregation is kube-controller-manager's job: give it a moment.
    eventually(lambda: can_i(kubectl, "viewer@example.com", "list", xks, "-n", ns) == "yes", 30,
               "view aggregates the viewer role")
    assert can_i(kubectl, "viewer@example.com", "patch", xks, "-n", ns) == "no"
    assert can_i(kubectl, "editor@example.com", "get", xks, "-n", ns) == "yes"
    assert can_i(kubectl, "editor@example.com", "create", xks, "-n", ns) == "no"
    assert can_i(kubectl, "xks-admin@example.com", "create", xks, "-n", ns) == "yes"
    assert can_i(kubectl, "xks-admin@example.com", "patch", xks, "--subresource=status", "-n", ns) == "no"
    assert can_i(kubectl, "xks-admin@example.com", "get", "secrets", "-n", ns) == "no"

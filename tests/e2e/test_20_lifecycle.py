"""The operator (two replicas of the chart's Deployment, cluster-wide) against
the emulator: what a user sees through kubectl and in KMS."""

from __future__ import annotations

import time

from conftest import FINDINGS, wait_ready, wait_xks
from harness import condition, eventually, is_ready, operation, secret, steps, store, wait_namespaces_gone

ROTATION = ["Preflight", "Disconnect", "Update", "HealthCheck", "Connect"]


def rotated(obj: dict) -> bool:
    op = operation(obj)
    return (op.get("generation") == obj["metadata"]["generation"] and op.get("phase") == "Succeeded"
            and is_ready(obj))


def test_create_becomes_ready(kubectl, operator, emulator, ns, fresh_host):
    host = fresh_host()
    kubectl.apply(store(ns, "create", host))
    obj = wait_ready(kubectl, ns, "create")
    st = obj["status"]
    kms = emulator.the_store("create")
    assert st["keyStoreId"] == kms["CustomKeyStoreId"], (st, kms)
    assert st["connectionState"] == "CONNECTED" and kms["ConnectionState"] == "CONNECTED", (st, kms)
    assert kms["XksProxyConfiguration"]["UriEndpoint"] == f"https://{host}", kms
    assert "xks-operator.io/finalizer" in obj["metadata"]["finalizers"], obj["metadata"]
    # `kubectl get xks` shows it the way the README says.
    row = kubectl.run("get", "xks", "create", "-n", ns, "--no-headers").stdout.split()
    assert row[:3] == ["create", "True", "CONNECTED"] and row[3] == kms["CustomKeyStoreId"], row


def test_endpoint_rotation_records_every_step(kubectl, operator, emulator, ns):
    # The README's rotation: the primary proxy to its replica.
    kubectl.apply(store(ns, "rotate", "xks-primary.example.com"))
    wait_ready(kubectl, ns, "rotate")
    kubectl.patch_xks(ns, "rotate", {"spec": {"proxy": {"uriEndpoint": "https://xks-replica.example.com"}}})
    obj = wait_xks(kubectl, ns, "rotate", rotated, "rotation Succeeded and Ready")
    assert steps(obj) == [(s, "Succeeded") for s in ROTATION], operation(obj)
    op = operation(obj)
    assert op["disruptive"] is True, op
    kms = emulator.the_store("rotate")
    assert kms["XksProxyConfiguration"]["UriEndpoint"] == "https://xks-replica.example.com", kms
    assert kms["ConnectionState"] == "CONNECTED", kms


def test_leader_killed_mid_rotation_the_other_replica_completes_it(kubectl, operator, emulator, ns, fresh_host):
    old, new = fresh_host(), fresh_host()
    kubectl.apply(store(ns, "failover", old))
    wait_ready(kubectl, ns, "failover")
    leader = operator.leader()
    # Slow transitions: the store sits in DISCONNECTING long enough to kill
    # the leader there.
    emulator.settings(disconnectDelayMs=8000, connectDelayMs=3000)
    try:
        kubectl.patch_xks(ns, "failover", {"spec": {"proxy": {"uriEndpoint": f"https://{new}"}}})
        eventually(lambda: emulator.the_store("failover")["ConnectionState"] == "DISCONNECTING",
                   60, "the store is DISCONNECTING", 0.1)
        operator.kill(leader)
        killed_at = time.monotonic()
        mid = kubectl.xks(ns, "failover")
        assert dict(steps(mid)).get("Update") == "Pending", f"not mid-rotation when killed: {steps(mid)}"
        obj = wait_xks(kubectl, ns, "failover", rotated, "rotation completed by the other replica", 120)
        took = time.monotonic() - killed_at
    finally:
        emulator.settings(disconnectDelayMs=300, connectDelayMs=300)
    survivor = operator.leader()
    assert survivor.name != leader.name, "the killed replica cannot be the leader"
    assert steps(obj) == [(s, "Succeeded") for s in ROTATION], operation(obj)
    kms = emulator.the_store("failover")
    assert kms["XksProxyConfiguration"]["UriEndpoint"] == f"https://{new}" and kms["ConnectionState"] == "CONNECTED", kms
    FINDINGS.append(f"failover: the other replica completed the rotation {took:.1f}s after the leader was "
                    "SIGKILLed in DISCONNECTING (Lease duration 15 s)")
    # The killed replica comes back as a follower, as the kubelet would restart it.
    operator.restart(leader)
    assert operator.leader().name == survivor.name


def test_suspend_makes_no_kms_call(kubectl, operator, emulator, ns, fresh_host):
    old, new = fresh_host(), fresh_host()
    kubectl.apply(store(ns, "suspended", old))
    wait_ready(kubectl, ns, "suspended")
    kubectl.patch_xks(ns, "suspended", {"spec": {"suspend": True}})
    wait_xks(kubectl, ns, "suspended",
             lambda o: (condition(o, "Ready") or {}).get("reason") == "Suspended"
             and o["status"].get("observedGeneration") == o["metadata"]["generation"],
             "Ready reason Suspended")
    # Earlier tests' namespaces gone: nothing else calls KMS in the window.
    wait_namespaces_gone(kubectl)
    before_kms = emulator.stats()
    # A disruptive change and a requested reconcile, both while suspended.
    kubectl.patch_xks(ns, "suspended", {
        "metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "suspended-1"}},
        "spec": {"proxy": {"uriEndpoint": f"https://{new}"}},
    })
    wait_xks(kubectl, ns, "suspended",
             lambda o: o["status"].get("observedGeneration") == o["metadata"]["generation"]
             and (condition(o, "Ready") or {}).get("reason") == "Suspended",
             "the new generation observed, still Suspended")
    time.sleep(5)
    after_kms = emulator.stats()
    calls = after_kms["totals"]["requests"] - before_kms["totals"]["requests"]
    probes = {h: after_kms["proxyRequests"].get(h, 0) - before_kms["proxyRequests"].get(h, 0) for h in (old, new)}
    assert calls == 0, f"{calls} KMS calls while suspended: {after_kms['operations']}"
    assert probes == {old: 0, new: 0}, f"proxy calls while suspended: {probes}"
    kms = emulator.the_store("suspended")
    assert kms["XksProxyConfiguration"]["UriEndpoint"] == f"https://{old}" and kms["ConnectionState"] == "CONNECTED", kms
    # Resumed, the pending change runs.
    kubectl.patch_xks(ns, "suspended", {"spec": {"suspend": False}})
    wait_xks(kubectl, ns, "suspended", rotated, "rotation after resume")
    assert emulator.the_store("suspended")["XksProxyConfiguration"]["UriEndpoint"] == f"https://{new}"


def test_require_approval_waits_for_the_annotation(kubectl, operator, emulator, ns, fresh_host):
    old, new = fresh_host(), fresh_host()
    kubectl.apply(store(ns, "gated", old, disruptiveUpdates="RequireApproval"))
    wait_ready(kubectl, ns, "gated")
    kubectl.patch_xks(ns, "gated", {"spec": {"proxy": {"uriEndpoint": f"https://{new}"}}})
    obj = wait_xks(kubectl, ns, "gated",
                   lambda o: operation(o).get("phase") == "AwaitingApproval"
                   and operation(o).get("generation") == o["metadata"]["generation"],
                   "AwaitingApproval")
    generation = obj["metadata"]["generation"]
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "AwaitingApproval", ready
    assert f"xks-operator.io/approve-generation={generation}" in ready["message"], ready
    wait_namespaces_gone(kubectl)
    before = emulator.mutating_calls()
    time.sleep(3)
    kms = emulator.the_store("gated")
    assert kms["ConnectionState"] == "CONNECTED" and kms["XksProxyConfiguration"]["UriEndpoint"] == f"https://{old}", kms
    assert emulator.mutating_calls() == before, "a KMS write before approval"
    # Approval of another generation does not count.
    kubectl.run("annotate", "xks", "gated", "-n", ns, f"xks-operator.io/approve-generation={generation + 5}", "--overwrite")
    time.sleep(3)
    assert operation(kubectl.xks(ns, "gated")).get("phase") == "AwaitingApproval"
    assert emulator.mutating_calls() == before, "a KMS write approved by the wrong generation"
    kubectl.run("annotate", "xks", "gated", "-n", ns, f"xks-operator.io/approve-generation={generation}", "--overwrite")
    obj = wait_xks(kubectl, ns, "gated", rotated, "rotation after approval")
    assert steps(obj) == [(s, "Succeeded") for s in ROTATION], operation(obj)
    assert emulator.the_store("gated")["XksProxyConfiguration"]["UriEndpoint"] == f"https://{new}"


def test_flux_requested_at_is_echoed(kubectl, operator, ns, fresh_host):
    kubectl.apply(store(ns, "flux", fresh_host()))
    wait_ready(kubectl, ns, "flux")
    for value in ("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"):
        kubectl.run("annotate", "xks", "flux", "-n", ns, f"reconcile.fluxcd.io/requestedAt={value}", "--overwrite")
        obj = wait_xks(kubectl, ns, "flux", lambda o, v=value: o["status"].get("lastHandledReconcileAt") == v,
                       f"status.lastHandledReconcileAt = {value}")
        assert is_ready(obj), obj["status"]


def test_missing_secret_is_named_then_ready_when_it_appears(kubectl, operator, emulator, make_namespace, cred, fresh_host):
    ns = make_namespace(with_secret=False)
    kubectl.apply(store(ns, "late", fresh_host(), secret_name="late-credential"))

    def names_the_secret(o):
        ready = condition(o, "Ready")
        messages = [c["message"] for c in (ready, condition(o, "Stalled")) if c]
        return ready and ready["status"] == "False" and any("late-credential" in m for m in messages)

    obj = wait_xks(kubectl, ns, "late", names_the_secret, "a condition names the missing Secret")
    assert not emulator.stores("late"), "a store was created without its credential"
    kubectl.apply(secret(ns, cred, name="late-credential"))
    wait_ready(kubectl, ns, "late")
    assert emulator.the_store("late")["ConnectionState"] == "CONNECTED"
    print("missing Secret:", {c["type"]: (c["reason"], c["message"]) for c in obj["status"]["conditions"]})


def test_delete_with_retain_keeps_the_store(kubectl, operator, emulator, ns, fresh_host):
    kubectl.apply(store(ns, "kept", fresh_host(), deletionPolicy="Retain"))
    wait_ready(kubectl, ns, "kept")
    kubectl.delete("xks", "kept", "-n", ns, timeout=60)
    assert kubectl.xks(ns, "kept") is None
    kms = emulator.the_store("kept")
    assert kms["ConnectionState"] == "CONNECTED", kms


def test_delete_with_delete_removes_the_store(kubectl, operator, emulator, ns, fresh_host):
    kubectl.apply(store(ns, "removed", fresh_host(), deletionPolicy="Delete"))
    wait_ready(kubectl, ns, "removed")
    assert emulator.stores("removed")
    kubectl.delete("xks", "removed", "-n", ns, timeout=90)
    assert kubectl.xks(ns, "removed") is None
    assert emulator.stores("removed") == [], "the KMS store outlived its resource (deletionPolicy Delete)"


def test_deleting_a_namespace_releases_its_stores(kubectl, operator, emulator, make_namespace, fresh_host):
    ns = make_namespace()
    kubectl.apply(store(ns, "ns-kept", fresh_host(), deletionPolicy="Retain"),
                  store(ns, "ns-removed", fresh_host(), deletionPolicy="Delete"))
    wait_ready(kubectl, ns, "ns-kept")
    wait_ready(kubectl, ns, "ns-removed")
    kubectl.run("delete", "namespace", ns, "--wait=false")
    eventually(lambda: kubectl.get("namespace", ns) is None, 120, f"namespace {ns} is gone")
    assert emulator.the_store("ns-kept")["ConnectionState"] == "CONNECTED"
    assert emulator.stores("ns-removed") == [], "deletionPolicy Delete in a deleted namespace left the store"

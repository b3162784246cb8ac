"""Fixtures of the end-to-end suite (run it with tests/e2e/run.sh).

Environment (run.sh sets it):
  KUBECONFIG           the cluster (required)
  KUBECTL              kubectl binary (default: kubectl on PATH)
  XKS_OPERATOR_BIN     the xks-operator binary under test (required)
  XKS_EMULATOR_BIN     the xks-emulator binary (default: `xks-operator emulator`)
  XKS_E2E_WORKDIR      where logs and kubeconfigs go (default: a pytest temp dir)
  XKS_E2E_AUDIT_LOG    the API server's audit log, when the suite started it
  XKS_E2E_LOAD_REPORT  where the API-server load figures are written
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import helm_python as helm
import pytest

from harness import (ROOT, Emulator, Kubectl, Operators, demo_credential, eventually, secret,
                     wait_namespaces_gone)

CRD_RELEASE = "xks-operator-crds"
OPERATOR_RELEASE = "xks-operator"
# Release namespace per install mode: distinct ServiceAccounts, so the audit
# log tells the two operators apart.
MODES = {
    "cluster-wide": ("xks-system", {}),
    "namespaced": ("xks-tenants", {"watchNamespaces": ["team-a", "team-b"]}),
}
COMMON_VALUES = {
    "replicaCount": 2,
    "leaderElection": {"enabled": True},
    "aws": {"region": "us-east-1"},
    # Debug logs give the secret-leak check more to look through.
    "logLevel": "info,xks_operator=debug",
}
EMULATOR_HOSTS = ["xks-primary.example.com", "xks-replica.example.com"] + [
    f"xks-e2e-{i:02}.example.com" for i in range(40)
]


# Figures worth reading even when everything passes (takeover and failover
# times, the claim message): printed at the end and added to the report.
FINDINGS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if not FINDINGS:
        return
    terminalreporter.section("e2e findings")
    for line in FINDINGS:
        terminalreporter.write_line(line)
    report = os.environ.get("XKS_E2E_LOAD_REPORT")
    # Only beside the load figures: a partial run leaves the last full report alone.
    if report and os.path.exists(report):
        with open(report, "a") as f:
            f.write("\nOther figures of the run:\n\n" + "".join(f"- {line}\n" for line in FINDINGS))


def env_required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with tests/e2e/run.sh", returncode=4)
    return value


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    path = os.environ.get("XKS_E2E_WORKDIR")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    return tmp_path_factory.mktemp("xks-e2e")


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    return env_required("KUBECONFIG")


@pytest.fixture(scope="session")
def kubectl(kubeconfig) -> Kubectl:
    k = Kubectl(os.environ.get("KUBECTL") or "kubectl", kubeconfig)
    k.run("version")
    return k


@pytest.fixture(scope="session")
def operator_bin() -> str:
    path = env_required("XKS_OPERATOR_BIN")
    assert os.access(path, os.X_OK), f"XKS_OPERATOR_BIN={path} is not an executable"
    return path


@pytest.fixture(scope="session")
def audit_log() -> str | None:
    return os.environ.get("XKS_E2E_AUDIT_LOG") or None


@pytest.fixture(scope="session")
def cred():
    return demo_credential()


@pytest.fixture(scope="session")
def emulator(operator_bin, workdir, cred):
    emulator_bin = os.environ.get("XKS_EMULATOR_BIN")
    command = [emulator_bin] if emulator_bin else [operator_bin, "emulator"]
    emu = Emulator(command, workdir, cred, EMULATOR_HOSTS)
    yield emu
    emu.stop()


_hosts = itertools.count()


@pytest.fixture
def fresh_host():
    """A proxy host no store uses yet (KMS refuses two stores on one
    endpoint + path)."""

    def take() -> str:
        i = next(_hosts)
        assert i < 40, "the suite needs more emulator proxy hosts (EMULATOR_HOSTS)"
        return f"xks-e2e-{i:02}.example.com"

    return take


# Namespaces the suite created, deleted at the end (a cluster named by
# KUBECONFIG keeps only what it had, plus the CRD).
CREATED_NAMESPACES: list[str] = []


def ensure_namespace(kubectl: Kubectl, name: str) -> None:
    existing = kubectl.get("namespace", name)
    if existing and existing["status"].get("phase") == "Terminating":
        # Left by an earlier run: let it go, then start afresh.
        eventually(lambda: kubectl.get("namespace", name) is None, 120, f"namespace {name} is gone")
        existing = None
    if existing is None:
        kubectl.create_namespace(name)
        CREATED_NAMESPACES.append(name)


def helm_install(kubeconfig: str, chart_dir: Path, release: str, namespace: str, values: dict) -> dict:
    """`helm upgrade --install`: a cluster named by KUBECONFIG may hold the
    release from an interrupted run."""
    cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    try:
        with helm.Chart.load(str(chart_dir)) as chart:
            try:
                cfg.status(release)
            except helm.HelmNotFoundError:
                return cfg.install(chart, release, values, namespace=namespace, create_namespace=True, timeout=120)
            return cfg.upgrade(chart, release, values, namespace=namespace, reset_values=True, timeout=120)
    finally:
        cfg.close()


def helm_uninstall(kubeconfig: str, release: str, namespace: str) -> dict:
    cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    try:
        return cfg.uninstall(release, timeout=120, ignore_not_found=True)
    finally:
        cfg.close()


CRD_NAMESPACE = "xks-system"


@pytest.fixture(scope="session")
def crds(kubeconfig, kubectl):
    """The CRD chart, installed the way the README says (first, on its own).
    Its uninstall is a test of test_90; this only tidies up after a partial run."""
    ensure_namespace(kubectl, CRD_NAMESPACE)
    rel = helm_install(kubeconfig, ROOT / "charts" / "xks-operator-crds", CRD_RELEASE, CRD_NAMESPACE, {})
    kubectl.run("wait", "--for=condition=Established", "crd/externalkeystores.xks-operator.io", "--timeout=60s")
    yield rel
    helm_uninstall(kubeconfig, CRD_RELEASE, CRD_NAMESPACE)
    for ns in reversed(CREATED_NAMESPACES):
        kubectl.delete("namespace", ns, wait=False)


class Installs:
    """The operator chart in one install mode at a time, and its replicas."""

    def __init__(self, kubectl, operator_bin, workdir, emulator):
        self.kubectl = kubectl
        self.bin = operator_bin
        self.workdir = workdir
        self.emulator = emulator
        self.mode: str | None = None
        self.operators: Operators | None = None
        self.installed: set[str] = set()
        self.all_users: set[str] = set()
        self.all_logs: list[Path] = []
        # /metrics of every replica, scraped before it stops.
        self.all_metrics: list[str] = []

    def switch(self, mode: str) -> Operators:
        if self.mode == mode:
            return self.operators
        self.stop_operators()
        self.uninstall()
        namespace, extra = MODES[mode]
        values = {**COMMON_VALUES, **extra}
        for ns in [namespace, *extra.get("watchNamespaces", [])]:
            ensure_namespace(self.kubectl, ns)
        helm_install(self.kubectl.kubeconfig, ROOT / "charts" / "xks-operator", OPERATOR_RELEASE, namespace, values)
        self.installed.add(namespace)
        deployments = self.kubectl.json("get", "deployments", "-n", namespace,
                                        "-l", f"app.kubernetes.io/instance={OPERATOR_RELEASE}")["items"]
        assert len(deployments) == 1, f"the chart renders one Deployment, got {len(deployments)}"
        ops = Operators(self.bin, self.workdir, self.kubectl, self.emulator, namespace, deployments[0])
        ops.start(2)
        ops.leader()
        self.mode, self.operators = mode, ops
        self.all_users.add(ops.user)
        return ops

    def stop_operators(self) -> None:
        if self.operators:
            # Deleted test namespaces need the operator to release their
            # resources' finalizers before it goes.
            wait_namespaces_gone(self.kubectl)
            self.all_metrics += [self.operators.metrics(r) for r in self.operators.running()]
            self.all_logs += [r.log_path for r in self.operators.replicas]
            self.operators.stop()
        self.operators, self.mode = None, None

    def uninstall(self) -> None:
        for ns in sorted(self.installed):
            helm_uninstall(self.kubectl.kubeconfig, OPERATOR_RELEASE, ns)
        self.installed.clear()

    def logs(self) -> str:
        paths = list(self.all_logs)
        if self.operators:
            paths += [r.log_path for r in self.operators.replicas]
        return "".join(p.read_text(errors="replace") for p in dict.fromkeys(paths) if p.exists())


@pytest.fixture(scope="session")
def installs(crds, kubectl, operator_bin, workdir, emulator):
    inst = Installs(kubectl, operator_bin, workdir, emulator)
    yield inst
    inst.stop_operators()
    inst.uninstall()


@pytest.fixture
def operator(installs) -> Operators:
    return installs.switch("cluster-wide")


@pytest.fixture
def namespaced_operator(installs) -> Operators:
    return installs.switch("namespaced")


_ns_counter = itertools.count()


@pytest.fixture
def make_namespace(kubectl, cred, request):
    """Namespaces with the proxy credential Secret, deleted after the test."""
    made: list[str] = []

    def make(prefix: str | None = None, with_secret: bool = True) -> str:
        base = prefix or re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
        name = f"{base}-{next(_ns_counter)}"
        kubectl.create_namespace(name)
        made.append(name)
        if with_secret:
            kubectl.apply(secret(name, cred))
        return name

    yield make
    for ns in made:
        kubectl.delete("namespace", ns, wait=False)


@pytest.fixture
def ns(make_namespace) -> str:
    return make_namespace()


def wait_ready(kubectl: Kubectl, ns: str, name: str, timeout: int = 120) -> dict:
    """`kubectl wait --for=condition=Ready`, as a user would."""
    kubectl.run("wait", f"externalkeystore/{name}", "-n", ns, "--for=condition=Ready",
                f"--timeout={timeout}s", timeout=timeout + 30)
    return kubectl.xks(ns, name)


def wait_xks(kubectl: Kubectl, ns: str, name: str, pred, what: str, timeout: float = 120) -> dict:
    def check():
        obj = kubectl.xks(ns, name)
        return obj if obj and pred(obj) else None

    return eventually(check, timeout, f"{ns}/{name}: {what}")

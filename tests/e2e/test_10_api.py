"""What the real API server says about the CRD and the project's own YAML:
schema, CEL and kubectl's YAML reading, no operator involved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ensure_namespace
from harness import ROOT, eventually

CRD_FILE = ROOT / "crds" / "externalkeystores.xks-operator.io.yaml"
INVALID_EXAMPLES = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
VALID_CORPUS = sorted((ROOT / "tests" / "corpus" / "valid").glob("*.yaml"))
INVALID_CORPUS = sorted((ROOT / "tests" / "corpus" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def header(path: Path, key: str) -> str | None:
    for line in path.read_text().splitlines():
        m = re.match(rf"^#\s*{key}:\s*(.+)$", line)
        if m:
            return m.group(1).strip()
        if not line.startswith("#"):
            return None
    return None


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning:")]


def test_crd_is_established(kubectl, crds):
    crd = kubectl.json("get", "crd", "externalkeystores.xks-operator.io")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
    assert "xks" in crd["status"]["acceptedNames"]["shortNames"], crd["status"]["acceptedNames"]
    # `kubectl get xks` answers (short name and printer columns work).
    out = kubectl.run("get", "xks", "-A").stderr
    assert "error" not in out.lower(), out


def test_kubectl_explain_documents_the_proxy(kubectl, crds):
    schema = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    proxy = schema["properties"]["spec"]["properties"]["proxy"]
    # The OpenAPI document follows the CRD a moment after Established.
    out = eventually(lambda: kubectl.run("explain", "externalkeystore.spec.proxy", check=False).stdout,
                     30, "kubectl explain answers")
    assert proxy["description"].split("\n")[0].strip() in out, out
    for field, sub in proxy["properties"].items():
        assert re.search(rf"^\s+{field}\s", out, re.M), f"explain does not list {field}:\n{out}"
    assert all(f in out for f in proxy["required"]), out
    # A field's own text, one level down.
    endpoint = kubectl.run("explain", "externalkeystore.spec.proxy.uriEndpoint").stdout
    assert proxy["properties"]["uriEndpoint"]["description"].split("\n")[0].strip() in endpoint, endpoint


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=lambda p: p.name)
def test_invalid_example_is_rejected_with_its_message(kubectl, crds, path):
    want = header(path, "expect")
    assert want, f"{path.name}: no '# expect:' first line"
    proc = kubectl.run("apply", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode != 0, f"the API server accepted {path.name}: {proc.stdout}"
    assert want in proc.stderr, f"{path.name}: rejected, but not with {want!r}: {proc.stderr.strip()}"


@pytest.mark.parametrize("path", VALID_CORPUS, ids=lambda p: p.name)
def test_valid_corpus_is_accepted(kubectl, crds, path):
    proc = kubectl.run("apply", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode == 0, f"the API server rejected {path.name}: {proc.stderr.strip()}"
    assert not warnings(proc.stderr), proc.stderr


@pytest.mark.parametrize("path", INVALID_CORPUS, ids=lambda p: p.name)
def test_invalid_corpus_is_rejected_at_its_field(kubectl, crds, make_namespace, path):
    """tests/corpus/invalid is written for the operator's own validation;
    the API server must refuse each file too, and at the field it names (a
    value kubectl's YAML reads as another type would fail elsewhere)."""
    field = header(path, "field")
    assert field, f"{path.name}: no '# field:' line"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    ns = make_namespace("corpus", with_secret=False)
    for d in docs:
        d["metadata"]["namespace"] = ns
    if len(docs) == 2:
        # A transition rule: the first document is stored, the second
        # updates it (server-side apply by the same manager, so a field left
        # out is removed). The rule sits on spec, so the API server names its
        # message rather than the field.
        kubectl.apply(docs[0])
        proc = kubectl.apply(docs[1], dry_run="server", check=False)
        want = header(path, "expect")
    else:
        proc = kubectl.run("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(docs[0]), check=False)
        want = field
    assert proc.returncode != 0, f"the API server accepted {path.name}"
    assert want in proc.stderr, f"{path.name}: rejected, but not for {want}: {proc.stderr.strip()}"


def test_no_warning_when_the_crd_is_applied(kubectl, crds):
    proc = kubectl.run("apply", "--server-side", "--force-conflicts", "--field-manager", "e2e-crd-check",
                       "--dry-run=server", "-f", str(CRD_FILE), check=False)
    assert proc.returncode == 0, proc.stderr
    assert not warnings(proc.stderr), f"the API server warns about the CRD:\n{proc.stderr}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_warning_when_an_example_is_applied(kubectl, crds, path):
    # An example may live in a namespace of its own (cross-account.yaml:
    # team-b), which a user creates first; so does the test.
    for doc in yaml.safe_load_all(path.read_text()):
        namespace = ((doc or {}).get("metadata") or {}).get("namespace")
        if namespace:
            ensure_namespace(kubectl, namespace)
    proc = kubectl.run("apply", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode == 0, f"{path.name}: {proc.stderr.strip()}"
    assert not warnings(proc.stderr), f"the API server warns about {path.name}:\n{proc.stderr}"

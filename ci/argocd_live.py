#!/usr/bin/env python3
"""Argo CD health check against what the real engine writes.

Starts `xks-operator emulator` on a free 127.0.0.1 port, runs
`xks-operator reconcile` on scenarios derived from examples/, turns each
resulting ExternalKeyStore (with the status the engine wrote) into a JSON
fixture, and runs gitops/argocd/test.lua on them. Catches a health.lua that
no longer matches the engine's conditions, reasons or operation phases.

Usage: ci/argocd_live.py [PATH_TO_XKS_OPERATOR_BINARY]   (default target/debug/xks-operator)
Needs: python3 with PyYAML, lua5.1. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


class NoTimestamps(yaml.SafeLoader):
    """Keep RFC 3339 strings as strings, as Argo CD sees them."""


NoTimestamps.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"argocd-live: the emulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("argocd-live: the emulator did not listen in time")


def read_example(name: str) -> dict:
    with open(os.path.join(ROOT, "examples", name)) as f:
        return yaml.safe_load(f)


def store_from_output(text: str) -> dict:
    # reconcile prints a progress table, then the resources as YAML documents.
    start = text.find("---\n")
    if start < 0:
        raise ValueError("no YAML in the output:\n" + text[-2000:])
    docs = [d for d in yaml.load_all(text[start:], Loader=NoTimestamps) if d]
    stores = [d for d in docs if d.get("kind") == "ExternalKeyStore"]
    if len(stores) != 1:
        raise ValueError(f"expected one ExternalKeyStore in the output, got {len(stores)}")
    return stores[0]


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "xks-operator")
    if not os.access(binary, os.X_OK):
        print(f"argocd-live: {binary} not found: build it first (cargo build)", file=sys.stderr)
        return 1
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY="emulator",
               AWS_EC2_METADATA_DISABLED="true")
    emu = subprocess.Popen([binary, "emulator", "--listen", f"127.0.0.1:{port}"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, emu)
        work = tempfile.mkdtemp(prefix="argocd-live-")
        secret = read_example("credentials-secret.yaml")
        store = read_example("public-endpoint.yaml")

        def reconcile(name: str, obj: dict, sec: dict | None = None) -> dict:
            path = os.path.join(work, f"{name}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump_all([sec or secret, obj], f, sort_keys=False)
            out = subprocess.run(
                [binary, "reconcile", "--kms-endpoint", base, "--region", "us-east-1",
                 "--proxy-resolve", f"xks-primary.example.com={base}",
                 "--proxy-resolve", f"xks-replica.example.com={base}", "-f", path],
                env=env, capture_output=True, text=True, timeout=180)
            return store_from_output(out.stdout)

        fixtures: dict[str, tuple[dict, str]] = {}
        created = reconcile("created", store)
        fixtures["created.json"] = (created, "Healthy")

        changed = copy.deepcopy(created)
        changed["metadata"]["generation"] = created["metadata"].get("generation", 1) + 1
        changed["spec"]["proxy"]["uriEndpoint"] = "https://xks-replica.example.com"

        gated = copy.deepcopy(changed)
        gated["spec"]["disruptiveUpdates"] = "RequireApproval"
        fixtures["awaiting-approval.json"] = (reconcile("gated", gated), "Progressing")

        suspended = copy.deepcopy(changed)
        suspended["spec"]["suspend"] = True
        fixtures["suspended.json"] = (reconcile("suspended", suspended), "Suspended")

        observe = copy.deepcopy(changed)
        observe["spec"]["managementPolicy"] = "ObserveOnly"
        fixtures["observe-only-drift.json"] = (reconcile("observe", observe), "Suspended")

        missing = copy.deepcopy(store)
        missing["metadata"]["name"] = "adopt-missing"
        missing["spec"]["keyStoreId"] = "cks-0000000000000000a"
        fixtures["adopt-missing-id.json"] = (reconcile("missing", missing), "Degraded")

        wrong = copy.deepcopy(store)
        wrong["metadata"]["name"] = "wrong-credential"
        # Preflight calls the proxy with the wrong secret and refuses: no
        # store is created, so the endpoint and path may equal created's.
        wrong_secret = copy.deepcopy(secret)
        wrong_secret["stringData"]["secretAccessKey"] = "x" * 43
        fixtures["wrong-credential.json"] = (reconcile("wrong", wrong, wrong_secret), "Degraded")

        out_dir = os.path.join(work, "fixtures")
        os.makedirs(out_dir)
        expected = {}
        for name, (obj, status) in fixtures.items():
            with open(os.path.join(out_dir, name), "w") as f:
                json.dump(obj, f, indent=2)
            expected[name] = {"status": status}
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            phase = (obj.get("status", {}).get("operation") or {}).get("phase")
            print(f"argocd-live: {name}: engine wrote {conds} phase={phase}")
        with open(os.path.join(out_dir, "expected.json"), "w") as f:
            json.dump(expected, f, indent=2)
        lua = subprocess.run(["lua5.1", os.path.join(ROOT, "gitops", "argocd", "test.lua"), out_dir])
        return lua.returncode
    finally:
        emu.terminate()
        try:
            emu.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emu.kill()


if __name__ == "__main__":
    sys.exit(main())

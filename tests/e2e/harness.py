"""What the end-to-end tests drive: kubectl against the API server, the
emulator (as AWS KMS and the XKS proxies) and the operator replicas, run as
local processes authenticated with a token of the chart's ServiceAccount."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

# The project files the suite reads (charts, crds, examples, tests/corpus):
# run.sh points XKS_E2E_TREE at a copy taken when the run starts, so an edit
# in the work tree during a run cannot mix two versions.
ROOT = Path(os.environ.get("XKS_E2E_TREE") or Path(__file__).resolve().parents[2])
GROUP = "xks-operator.io"
KIND_PLURAL = f"externalkeystores.{GROUP}"
REGION = "us-east-1"
PROXY_PATH = "/example/kms/xks/v1"


class Timeout(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll fn until it returns something truthy; the last value (or error)
    is in the failure message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as e:  # a check inside fn that is not true yet
            last = e
        if time.monotonic() > deadline:
            raise Timeout(f"{what}: not true after {timeout:.0f}s; last: {shorten(last)}")
        time.sleep(interval)


def shorten(value: Any, limit: int = 1500) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------
# kubectl
# --------------------------------------------------------------------------


class KubectlError(AssertionError):
    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        self.proc = proc
        super().__init__(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")


class Kubectl:
    """kubectl with the suite's kubeconfig. Every call's stderr is kept in
    `warnings` when it carries an API server warning."""

    def __init__(self, binary: str, kubeconfig: str):
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120,
            kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        argv = [self.binary, "--kubeconfig", kubeconfig or self.kubeconfig, *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc)
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", resource, name, "--ignore-not-found", "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        out = self.run(*args).stdout.strip()
        return json.loads(out) if out else None

    def apply(self, *docs: dict, dry_run: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        args = ["apply", "--server-side", "--field-manager", "e2e", "--force-conflicts", "-f", "-"]
        if dry_run:
            args.append(f"--dry-run={dry_run}")
        return self.run(*args, input=yaml.safe_dump_all(docs), check=check)

    def apply_file(self, path: Path | str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("apply", "-f", str(path), *extra, check=check)

    def patch_xks(self, namespace: str, name: str, patch: dict) -> None:
        self.run("patch", "externalkeystore", name, "-n", namespace, "--type", "merge", "-p", json.dumps(patch))

    def xks(self, namespace: str, name: str) -> dict | None:
        return self.get("externalkeystore", name, namespace)

    def raw(self, path: str) -> str:
        return self.run("get", "--raw", path).stdout

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        self.apply(doc)

    def delete(self, *args: str, wait: bool = True, timeout: float = 120) -> None:
        self.run("delete", *args, "--ignore-not-found", f"--wait={'true' if wait else 'false'}",
                 f"--timeout={int(timeout)}s", timeout=timeout + 30)

    def cluster(self) -> tuple[str, str]:
        """The API server URL and its CA bundle (PEM) of the current context."""
        cfg = json.loads(self.run("config", "view", "--minify", "--raw", "-o", "json").stdout)
        cluster = cfg["clusters"][0]["cluster"]
        ca = cluster.get("certificate-authority-data")
        if ca:
            pem = base64.b64decode(ca).decode()
        elif cluster.get("certificate-authority"):
            pem = Path(cluster["certificate-authority"]).read_text()
        else:
            pem = ""
        return cluster["server"], pem


def wait_namespaces_gone(kubectl: Kubectl, timeout: float = 180) -> None:
    """Until no namespace is Terminating: a deleted namespace whose resources
    still carry the operator's finalizer needs a running operator to go."""
    def none_terminating():
        items = kubectl.json("get", "namespaces")["items"]
        return not [n["metadata"]["name"] for n in items if n["status"].get("phase") == "Terminating"]
    eventually(none_terminating, timeout, "terminating namespaces are gone", 1)


def condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def is_ready(obj: dict | None) -> bool:
    c = condition(obj, "Ready")
    return bool(c and c["status"] == "True" and c.get("observedGeneration", obj["metadata"]["generation"])
                == obj["metadata"]["generation"])


def steps(obj: dict | None) -> list[tuple[str, str]]:
    op = ((obj or {}).get("status") or {}).get("operation") or {}
    return [(s["name"], s["state"]) for s in op.get("steps", [])]


def operation(obj: dict | None) -> dict:
    return ((obj or {}).get("status") or {}).get("operation") or {}


# --------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    secret_access_key: str


def demo_credential() -> Credential:
    """The emulator's demo proxy credential, from the example Secret users apply."""
    doc = yaml.safe_load((ROOT / "examples" / "credentials-secret.yaml").read_text())
    data = doc["stringData"]
    return Credential(data["accessKeyId"], data["secretAccessKey"])


def secret(namespace: str, cred: Credential, name: str = "xks-proxy-credential") -> dict:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"accessKeyId": cred.access_key_id, "secretAccessKey": cred.secret_access_key},
    }


def store(namespace: str, name: str, host: str, *, secret_name: str = "xks-proxy-credential",
          annotations: dict | None = None, **spec: Any) -> dict:
    body = {
        "region": REGION,
        "proxy": {
            "connectivity": "PublicEndpoint",
            "uriEndpoint": f"https://{host}",
            "uriPath": PROXY_PATH,
            "credentialsSecretRef": {"name": secret_name},
        },
    }
    body.update(spec)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ExternalKeyStore", "metadata": meta, "spec": body}


# --------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
    return json.loads(text) if text else None


class Emulator:
    """`xks-operator emulator`: KMS and a fleet of XKS proxies on one
    loopback port. Every proxy host serves the demo credential and keys, so a
    store may use any of them; KMS refuses two stores on one endpoint + path,
    hence one host per store."""

    def __init__(self, command: list[str], workdir: Path, cred: Credential, hosts: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hosts = hosts
        config = {
            "region": REGION,
            "connectDelayMs": 300,
            "disconnectDelayMs": 300,
            "maxCustomKeyStores": 100,
            "proxies": [
                {
                    "host": h,
                    "uriPath": PROXY_PATH,
                    "credentials": [{"accessKeyId": cred.access_key_id, "secretAccessKey": cred.secret_access_key}],
                    "keys": [{"id": "e2e-key-1"}],
                }
                for h in hosts
            ],
        }
        # The config holds the demo proxy secret: private file, removed with workdir.
        cfg_path = workdir / "emulator.yaml"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = workdir / "emulator.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*command, "--listen", f"127.0.0.1:{self.port}", "--config", str(cfg_path)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        eventually(self._healthy, 30, "the emulator answers /_emulator/health", 0.2)

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"the emulator exited {self.proc.returncode}: see {self.log_path}"
        try:
            return bool(http_json("GET", f"{self.url}/_emulator/health").get("ok"))
        except OSError:
            return False

    def state(self) -> dict:
        return http_json("GET", f"{self.url}/_emulator/state")

    def stats(self) -> dict:
        return http_json("GET", f"{self.url}/_emulator/stats")

    def settings(self, **values: Any) -> None:
        http_json("PUT", f"{self.url}/_emulator/settings", values)

    def stores(self, name: str | None = None) -> list[dict]:
        stores = self.state()["customKeyStores"]
        return [s for s in stores if name is None or s["CustomKeyStoreName"] == name]

    def the_store(self, name: str) -> dict:
        found = self.stores(name)
        assert len(found) == 1, f"expected one KMS store named {name}, found {len(found)}: {found}"
        return found[0]

    def mutating_calls(self) -> dict[str, int]:
        """Requests per KMS operation that can change a store."""
        ops = self.stats()["operations"]
        return {op: s["requests"] for op, s in ops.items()
                if op in ("CreateCustomKeyStore", "UpdateCustomKeyStore", "ConnectCustomKeyStore",
                          "DisconnectCustomKeyStore", "DeleteCustomKeyStore")}

    def requests(self, op: str) -> int:
        return self.stats()["operations"].get(op, {}).get("requests", 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------
# The operator replicas
# --------------------------------------------------------------------------


_replica_numbers = itertools.count()


@dataclass
class Replica:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    log: Any = None


@dataclass
class Operators:
    """The chart's Deployment, run as local processes: its container args and
    environment, the chart ServiceAccount's token as the only credential."""

    binary: str
    workdir: Path
    kubectl: Kubectl
    emulator: Emulator
    namespace: str
    deployment: dict
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        pod = self.deployment["spec"]["template"]["spec"]
        self.service_account = pod["serviceAccountName"]
        (container,) = pod["containers"]
        self.args: list[str] = list(container["args"])
        self.chart_env: list[dict] = container.get("env", [])
        self.kubeconfig = self._token_kubeconfig()

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def _token_kubeconfig(self) -> str:
        # TokenRequest for the chart's ServiceAccount, as the kubelet would
        # project it into the pod.
        token = self.kubectl.run("create", "token", self.service_account, "-n", self.namespace,
                                 "--duration", "4h").stdout.strip()
        server, ca_pem = self.kubectl.cluster()
        cluster: dict[str, Any] = {"server": server}
        if ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(ca_pem.encode()).decode()
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": self.namespace}}],
            "current-context": "sa",
        }
        path = self.workdir / f"operator-{self.namespace}.kubeconfig"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg, f)
        return str(path)

    def _argv(self, port: int) -> list[str]:
        args = list(self.args)
        i = args.index("--listen-addr")
        args[i + 1] = f"127.0.0.1:{port}"
        for host in self.emulator.hosts:
            args += ["--proxy-resolve", f"{host}={self.emulator.url}"]
        return [self.binary, *args]

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        for e in self.chart_env:
            ref = (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            if ref == "metadata.namespace":
                env[e["name"]] = self.namespace
            elif ref == "metadata.name":
                env[e["name"]] = name
            elif "value" in e:
                env[e["name"]] = e["value"]
            else:
                raise AssertionError(f"the chart sets {e['name']} from {e.get('valueFrom')}: not modelled here")
        env.update({
            "KUBECONFIG": self.kubeconfig,
            "AWS_ENDPOINT_URL_KMS": self.emulator.url,
            "AWS_REGION": env.get("AWS_REGION", REGION),
            # The emulator does not check request signatures; any key works.
            "AWS_ACCESS_KEY_ID": "AKIAE2EEMULATOR00000",
            "AWS_SECRET_ACCESS_KEY": "e2e-emulator-does-not-check-signatures",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        })
        return env

    def start(self, count: int = 2) -> None:
        for _ in range(count):
            # Distinct pod names over the whole run, so each log file is one process's.
            name = f"xks-operator-{next(_replica_numbers)}"
            r = Replica(name=name, port=free_port(), log_path=self.workdir / f"{name}.log")
            self.replicas.append(r)
            self._spawn(r)
        for r in self.replicas:
            eventually(lambda r=r: self._serving(r), 60, f"{r.name} serves /health")

    def _spawn(self, r: Replica) -> None:
        r.log = open(r.log_path, "a")
        r.proc = subprocess.Popen(self._argv(r.port), env=self._env(r.name), stdout=r.log, stderr=subprocess.STDOUT)

    def _serving(self, r: Replica) -> bool:
        assert r.proc and r.proc.poll() is None, f"{r.name} exited {r.proc.returncode if r.proc else '?'}: {tail(r.log_path)}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{r.port}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc and r.proc.poll() is None]

    def lease_holder(self) -> str | None:
        args = self.args
        lease = args[args.index("--lease-name") + 1]
        obj = self.kubectl.get("lease", lease, self.namespace)
        return ((obj or {}).get("spec") or {}).get("holderIdentity")

    def leader(self, timeout: float = 60) -> Replica:
        def find() -> Replica | None:
            holder = self.lease_holder()
            return next((r for r in self.running() if r.name == holder), None)
        return eventually(find, timeout, "a running replica holds the Lease")

    def kill(self, r: Replica, sig: int = signal.SIGKILL) -> None:
        assert r.proc
        r.proc.send_signal(sig)
        r.proc.wait(30)

    def restart(self, r: Replica) -> None:
        """As the kubelet would: the same pod name, a new process."""
        if r.log:
            r.log.close()
        self._spawn(r)
        eventually(lambda: self._serving(r), 60, f"{r.name} serves /health again")

    def metrics(self, r: Replica) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def logs(self) -> str:
        return "".join(r.log_path.read_text(errors="replace") for r in self.replicas if r.log_path.exists())

    def stop(self) -> None:
        for r in self.running():
            r.proc.terminate()
        for r in self.replicas:
            if r.proc:
                try:
                    r.proc.wait(20)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait()
            if r.log:
                r.log.close()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# kube-apiserver's own metrics and audit log
# --------------------------------------------------------------------------

READ_VERBS = {"GET", "LIST", "WATCH", "CONNECT"}
_SAMPLE = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_writes(kubectl: Kubectl) -> dict[str, float]:
    """Write requests the API server has answered, by resource[/subresource],
    from its own apiserver_request_total."""
    out: dict[str, float] = {}
    for line in kubectl.raw("/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("verb") in READ_VERBS:
            continue
        key = labels.get("resource", "")
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        out[key] = out.get(key, 0) + float(m.group(2))
    return out


def diff_counts(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0) > 0}


def audit_events(path: str | None) -> list[dict]:
    if not path:
        return []
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written right now
    return events


class Watch:
    """Every version of one ExternalKeyStore while it runs (kubectl get
    --watch), to say what each write changed."""

    def __init__(self, kubectl: Kubectl, namespace: str, name: str):
        self.proc = subprocess.Popen(
            [kubectl.binary, "--kubeconfig", kubectl.kubeconfig, "get", "externalkeystore", name, "-n", namespace,
             "-o", "json", "--watch", "--output-watch-events"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.objects: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        eventually(lambda: self.objects, 30, f"the watch on {namespace}/{name} delivers the object", 0.1)

    def _read(self) -> None:
        decoder, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            while buf.strip():
                try:
                    event, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break  # an event is still arriving
                self.objects.append(event["object"])
                buf = buf.lstrip()[end:]

    def stop(self, last: Callable[[dict], bool]) -> list[dict]:
        """Once the watch has delivered a version for which `last` holds."""
        try:
            eventually(lambda: self.objects and last(self.objects[-1]), 30, "the watch caught up", 0.1)
        finally:
            self.proc.terminate()
            self.proc.wait(10)
        return list(self.objects)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            key = (v.get("type") or v.get("name") or i) if isinstance(v, dict) else i
            out += _flatten(v, f"{prefix}[{key}]")
        return out
    return [(prefix, value)]


def changes(before: dict, after: dict) -> list[str]:
    """What changed between two versions of an object, timestamps left out."""
    def flat(obj: dict) -> dict:
        obj = {k: v for k, v in obj.items() if k != "metadata"} | {
            "metadata": {k: v for k, v in obj["metadata"].items() if k in ("generation", "finalizers", "annotations")}}
        return {k: v for k, v in _flatten(obj)
                if not re.search(r"(Time|At|Timestamp)$", k)}
    a, b = flat(before), flat(after)

    def short(v: Any) -> str:
        text = json.dumps(v, ensure_ascii=False) if v is not None else "-"
        return text if len(text) <= 40 else text[:37] + '..."'
    return [f"{k}: {short(a.get(k))} → {short(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def summary(items: list[str], limit: int = 8) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")

"""`xks-operator reconcile -f examples/cross-account.yaml` against the
emulator (its embedded default: account 111122223333, plus 222233334444 with
the role the example names): the operator assumes the role through STS and
the store reaches CONNECTED in the role's account, as boto3, with credentials
it assumed itself, sees it. Run by .ci/run after the cargo build:

    cargo build --workspace
    python3 -m pytest tests/cross_account -q
"""

import os
import socket
import subprocess
import time

import boto3
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPERATOR = os.environ.get("XKS_OPERATOR_BIN", os.path.join(ROOT, "target", "debug", "xks-operator"))
EMULATOR = os.environ.get("XKS_EMULATOR_BIN", os.path.join(ROOT, "target", "debug", "xks-emulator"))
EXAMPLE = os.path.join(ROOT, "examples", "cross-account.yaml")
ROLE = "arn:aws:iam::222233334444:role/xks-operator"
SECRET = "demoSecretAccessKeyForTheXksProxyPrimary0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def endpoint():
    port = free_port()
    proc = subprocess.Popen(
        [EMULATOR, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def client(service, endpoint, **credentials):
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.get("AccessKeyId", "test"),
        aws_secret_access_key=credentials.get("SecretAccessKey", "test"),
        aws_session_token=credentials.get("SessionToken"),
    )


def test_reconcile_reaches_connected_in_the_roles_account(endpoint):
    run = subprocess.run(
        [
            OPERATOR, "reconcile", "-f", EXAMPLE,
            "--kms-endpoint", endpoint,
            "--proxy-resolve", f"xks-primary.example.com={endpoint}",
            "--timeout-seconds", "120",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "XKS_LOG": "debug"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "connectionState: CONNECTED" in run.stdout, run.stdout
    assert SECRET not in run.stdout + run.stderr

    assumed = client("sts", endpoint).assume_role(RoleArn=ROLE, RoleSessionName="check")
    in_role = client("kms", endpoint, **assumed["Credentials"])
    stores = in_role.describe_custom_key_stores()["CustomKeyStores"]
    assert [(s["CustomKeyStoreName"], s["ConnectionState"]) for s in stores] == [("orders", "CONNECTED")]
    identity = client("sts", endpoint, **assumed["Credentials"]).get_caller_identity()
    assert identity["Account"] == "222233334444"

    # The operator's own account holds no store: it acted as the role.
    own = client("kms", endpoint).describe_custom_key_stores()["CustomKeyStores"]
    assert own == []

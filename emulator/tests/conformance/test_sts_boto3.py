"""Conformance of the emulator's STS and its accounts, seen through botocore
(boto3): AssumeRole and GetCallerIdentity as boto3's STS client sends and
parses them, a KMS client with assumed credentials acting in the role's
account only, denials and expiry as botocore reads them. Run like
test_kms_boto3.py:

    cargo build -p xks-emulator
    python3 -m pytest emulator/tests/conformance -q
"""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("XKS_EMULATOR_BIN", os.path.join(ROOT, "target", "debug", "xks-emulator"))
AKID = "XKSCONFORMANCEKEYIDAA"
SECRET = "conformanceSecretAccessKeyForTheXksProxy0123456789"
PATH = "/conf/kms/xks/v1"
DEFAULT_ACCOUNT = "111122223333"
SECOND_ACCOUNT = "222233334444"
ROLE = "arn:aws:iam::222233334444:role/xks-operator"
GUARDED = "arn:aws:iam::222233334444:role/guarded"
EXTERNAL_ID = "conformance-external-id"
CI_KEY = "AKIACONFORMANCECI001"

CONFIG = f"""
region: us-east-1
accountId: "{DEFAULT_ACCOUNT}"
connectDelayMs: 50
disconnectDelayMs: 50
maxCustomKeyStores: 2
proxies:
  - host: xks-a.example.com
    uriPath: {PATH}
    credentials: [{{accessKeyId: {AKID}, secretAccessKey: {SECRET}}}]
    keys: [{{id: ext-key-1}}]
identities:
  - accessKeyId: {CI_KEY}
    arn: arn:aws:iam::333344445555:user/ci
roles:
  - arn: {ROLE}
    trustedPrincipals: ["{DEFAULT_ACCOUNT}"]
  - arn: {GUARDED}
    trustedPrincipals: ["arn:aws:iam::{DEFAULT_ACCOUNT}:user/emulator"]
    externalId: {EXTERNAL_ID}
"""

NO_VALIDATION = Config(parameter_validation=False, retries={"total_max_attempts": 1})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, config):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [BINARY, "--listen", f"127.0.0.1:{self.port}"]
        self.config = None
        if config is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(config)
                self.config = f.name
            args += ["--config", self.config]
        env = dict(os.environ, XKS_LOG="debug")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)

    def client(self, service, key="test", secret="test", token=None, region="us-east-1"):
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=NO_VALIDATION,
        )

    def assumed(self, service, role=ROLE, region="us-east-1", **extra):
        creds = self.client("sts").assume_role(RoleArn=role, RoleSessionName="conformance", **extra)["Credentials"]
        self.issued.append(creds)
        return self.client(
            service,
            key=creds["AccessKeyId"],
            secret=creds["SecretAccessKey"],
            token=creds["SessionToken"],
            region=region,
        )

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.endpoint}/_emulator/{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"null")

    def stop(self):
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=10)
        if self.config:
            os.unlink(self.config)
        return out + err


@pytest.fixture()
def emu():
    e = Emulator(CONFIG)
    e.issued = []
    yield e
    logs = e.stop()
    assert SECRET.encode() not in logs, "the emulator logged a proxy secret"
    assert EXTERNAL_ID.encode() not in logs, "the emulator logged an external id"
    for creds in e.issued:
        assert creds["SecretAccessKey"].encode() not in logs, "the emulator logged an issued secret"
        assert creds["SessionToken"].encode() not in logs, "the emulator logged a session token"


def error(excinfo):
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def create(kms, name="store-a", path=PATH):
    return kms.create_custom_key_store(
        CustomKeyStoreName=name,
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyUriEndpoint="https://xks-a.example.com",
        XksProxyUriPath=path,
        XksProxyAuthenticationCredential={"AccessKeyId": AKID, "RawSecretAccessKey": SECRET},
    )["CustomKeyStoreId"]


def names(kms):
    return [s["CustomKeyStoreName"] for s in kms.describe_custom_key_stores()["CustomKeyStores"]]


def test_get_caller_identity_of_the_default_identity_and_of_an_identity(emu):
    me = emu.client("sts").get_caller_identity()
    assert me["Account"] == DEFAULT_ACCOUNT
    assert me["Arn"] == f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/emulator"
    assert me["UserId"].startswith("AIDA")
    assert len(me["ResponseMetadata"]["RequestId"]) == 36
    ci = emu.client("sts", key=CI_KEY).get_caller_identity()
    assert (ci["Account"], ci["Arn"]) == ("333344445555", "arn:aws:iam::333344445555:user/ci")


def test_assume_role_shape_and_identity_of_the_session(emu):
    sts = emu.client("sts")
    out = sts.assume_role(RoleArn=ROLE, RoleSessionName="conformance", DurationSeconds=900)
    creds = out["Credentials"]
    emu.issued.append(creds)
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
    assert creds["SecretAccessKey"] and creds["SessionToken"]
    left = creds["Expiration"].timestamp() - time.time()
    assert 880 < left <= 901, left  # botocore parsed the timestamp
    user = out["AssumedRoleUser"]
    assert user["Arn"] == f"arn:aws:sts::{SECOND_ACCOUNT}:assumed-role/xks-operator/conformance"
    assert user["AssumedRoleId"].startswith("AROA") and user["AssumedRoleId"].endswith(":conformance")
    who = emu.client(
        "sts", key=creds["AccessKeyId"], secret=creds["SecretAccessKey"], token=creds["SessionToken"]
    ).get_caller_identity()
    assert who["Account"] == SECOND_ACCOUNT
    assert who["Arn"] == user["Arn"]
    assert who["UserId"] == user["AssumedRoleId"]


def test_assumed_credentials_see_only_their_account(emu):
    mine = emu.client("kms")
    theirs = emu.assumed("kms")
    mine_id = create(mine)
    their_id = create(theirs)  # the same name and proxy URI, another account
    assert mine_id != their_id
    assert names(mine) == ["store-a"] and names(theirs) == ["store-a"]
    with pytest.raises(ClientError) as e:
        theirs.describe_custom_key_stores(CustomKeyStoreId=mine_id)
    assert error(e) == ("CustomKeyStoreNotFoundException", 400)
    key_arn = theirs.create_key()["KeyMetadata"]["Arn"]
    assert key_arn.startswith(f"arn:aws:kms:us-east-1:{SECOND_ACCOUNT}:key/")
    # Another Region of the same account is another set of stores.
    assert names(emu.assumed("kms", region="eu-west-1")) == []
    state = emu.control("GET", f"state?account={SECOND_ACCOUNT}")
    assert [s["CustomKeyStoreId"] for s in state["customKeyStores"]] == [their_id]
    assert emu.control("GET", "state")["customKeyStores"][0]["CustomKeyStoreId"] == mine_id


def test_quota_is_per_account(emu):
    mine = emu.client("kms")
    theirs = emu.assumed("kms")
    for i in range(2):
        vpc_store(mine, i)
    with pytest.raises(ClientError) as e:
        vpc_store(mine, 2)
    assert error(e) == ("LimitExceededException", 400)
    for i in range(2):
        vpc_store(theirs, i)


def vpc_store(kms, i):
    return kms.create_custom_key_store(
        CustomKeyStoreName=f"s{i}",
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyConnectivity="VPC_ENDPOINT_SERVICE",
        XksProxyUriEndpoint=f"https://xks-vpc-{i}.example.com",
        XksProxyUriPath=PATH,
        XksProxyVpcEndpointServiceName=f"com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcde{i:02d}",
        XksProxyAuthenticationCredential={"AccessKeyId": AKID, "RawSecretAccessKey": SECRET},
    )["CustomKeyStoreId"]


def test_access_denied_as_botocore_parses_it(emu):
    sts = emu.client("sts")
    for role, extra in [
        ("arn:aws:iam::222233334444:role/unknown", {}),
        (GUARDED, {}),
        (GUARDED, {"ExternalId": "wrong-external-id"}),
    ]:
        with pytest.raises(ClientError) as e:
            sts.assume_role(RoleArn=role, RoleSessionName="conformance", **extra)
        assert error(e) == ("AccessDenied", 403)
        err = e.value.response["Error"]
        assert err["Type"] == "Sender"
        assert err["Message"] == (
            f"User: arn:aws:iam::{DEFAULT_ACCOUNT}:user/emulator is not authorized to perform: "
            f"sts:AssumeRole on resource: {role}"
        )
    with pytest.raises(ClientError) as e:
        emu.client("sts", key=CI_KEY).assume_role(RoleArn=ROLE, RoleSessionName="conformance")
    assert error(e) == ("AccessDenied", 403)
    assert "arn:aws:iam::333344445555:user/ci" in e.value.response["Error"]["Message"]
    ok = emu.assumed("sts", role=GUARDED, ExternalId=EXTERNAL_ID)
    assert ok.get_caller_identity()["Arn"].endswith(":assumed-role/guarded/conformance")


@pytest.mark.parametrize(
    "extra",
    [
        {"RoleSessionName": "x"},
        {"RoleSessionName": "has space"},
        {"RoleSessionName": "conformance", "DurationSeconds": 899},
        {"RoleSessionName": "conformance", "DurationSeconds": 43201},
        {"RoleSessionName": "conformance", "DurationSeconds": 7200},
        {"RoleSessionName": "conformance", "ExternalId": "x"},
    ],
)
def test_invalid_input_is_a_validation_error(emu, extra):
    with pytest.raises(ClientError) as e:
        emu.client("sts").assume_role(RoleArn=ROLE, **extra)
    assert error(e) == ("ValidationError", 400)


def test_expired_credentials(emu):
    kms = emu.assumed("kms")
    sts = emu.assumed("sts")
    kms.list_keys()
    assert emu.control("POST", "sts/expire-sessions")["expired"] == 2
    with pytest.raises(ClientError) as e:
        kms.list_keys()
    assert error(e) == ("ExpiredTokenException", 400)
    assert e.value.response["Error"]["Message"] == "The security token included in the request is expired"
    with pytest.raises(ClientError) as e:
        sts.get_caller_identity()
    assert error(e) == ("ExpiredToken", 400)


def test_sts_throttling_fault(emu):
    emu.control("PUT", "sts/faults/AssumeRole", {"throttleNext": 1})
    with pytest.raises(ClientError) as e:
        emu.client("sts").assume_role(RoleArn=ROLE, RoleSessionName="conformance")
    assert error(e) == ("Throttling", 400)
    emu.assumed("sts").get_caller_identity()
    assert emu.control("GET", "sts")["operations"]["AssumeRole"]["throttled"] == 1


def test_a_kms_fault_in_one_account_is_not_seen_in_another(emu):
    emu.control("PUT", f"faults/ListKeys?account={SECOND_ACCOUNT}", {"throttleNext": 1})
    emu.client("kms").list_keys()
    theirs = emu.assumed("kms")
    with pytest.raises(ClientError) as e:
        theirs.list_keys()
    assert error(e) == ("ThrottlingException", 400)
    theirs.list_keys()


def test_the_embedded_default_has_a_second_account():
    e = Emulator(None)
    e.issued = []
    try:
        who = e.assumed("sts").get_caller_identity()
        assert who["Account"] == SECOND_ACCOUNT
        assert who["Arn"] == f"arn:aws:sts::{SECOND_ACCOUNT}:assumed-role/xks-operator/conformance"
    finally:
        e.stop()

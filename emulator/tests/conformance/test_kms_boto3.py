"""Conformance of the KMS emulator seen through botocore (boto3), a client
nobody on this project wrote: request and response shapes, error names,
pagination, state transitions. Run by .ci/run after the cargo build:

    cargo build -p xks-emulator
    python3 -m pytest emulator/tests/conformance -q

XKS_EMULATOR_BIN names another build of the `xks-emulator` binary.
"""

import os
import socket
import subprocess
import tempfile
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

# emulator/tests/conformance -> the workspace root, whose target/ holds the build.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("XKS_EMULATOR_BIN", os.path.join(ROOT, "target", "debug", "xks-emulator"))
AKID = "XKSCONFORMANCEKEYIDAA"
SECRET = "conformanceSecretAccessKeyForTheXksProxy0123456789"
PATH = "/conf/kms/xks/v1"

CONFIG = f"""
region: us-east-1
accountId: "111122223333"
connectDelayMs: 50
disconnectDelayMs: 50
maxCustomKeyStores: 10
proxies:
  - host: xks-a.example.com
    uriPath: {PATH}
    credentials: [{{accessKeyId: {AKID}, secretAccessKey: {SECRET}}}]
    keys: [{{id: ext-key-1}}]
  - host: xks-b.example.com
    uriPath: {PATH}
    credentials: [{{accessKeyId: {AKID}, secretAccessKey: {SECRET}}}]
    keys: [{{id: ext-key-1}}]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def kms():
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(CONFIG)
        config = f.name
    proc = subprocess.Popen(
        [BINARY, "--listen", f"127.0.0.1:{port}", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    client = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        # Client-side validation off: the emulator's own rules must answer.
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    yield client
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert SECRET.encode() not in out + err, "the emulator logged a secret"
    os.unlink(config)


def create(kms, name="store-a", host="xks-a.example.com", path=PATH, **extra):
    args = dict(
        CustomKeyStoreName=name,
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyUriEndpoint=f"https://{host}",
        XksProxyUriPath=path,
        XksProxyAuthenticationCredential={"AccessKeyId": AKID, "RawSecretAccessKey": SECRET},
    )
    args.update(extra)
    return kms.create_custom_key_store(**args)["CustomKeyStoreId"]


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def wait_state(kms, store_id, want, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        store = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]
        if store["ConnectionState"] == want:
            return store
        time.sleep(0.02)
    raise AssertionError(f"never reached {want}: {store}")


def test_create_describe_shape(kms):
    store_id = create(kms)
    assert store_id.startswith("cks-")
    store = kms.describe_custom_key_stores(CustomKeyStoreName="store-a")["CustomKeyStores"][0]
    assert store["CustomKeyStoreId"] == store_id
    assert store["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE"
    assert store["ConnectionState"] == "DISCONNECTED"
    assert "ConnectionErrorCode" not in store
    assert store["CreationDate"].year >= 2024  # botocore parsed the epoch number
    proxy = store["XksProxyConfiguration"]
    assert proxy["Connectivity"] == "PUBLIC_ENDPOINT"
    assert proxy["AccessKeyId"] == AKID
    assert proxy["UriEndpoint"] == "https://xks-a.example.com"
    assert proxy["UriPath"] == PATH
    assert SECRET not in str(store)


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("XksProxyUriEndpoint", "https://xks-a.example.com:443", "ValidationException"),
        ("XksProxyUriEndpoint", "http://xks-a.example.com", "ValidationException"),
        ("XksProxyUriPath", "/conf/kms/xks", "ValidationException"),
        ("XksProxyUriPath", "/kms/xks/v123", "ValidationException"),
        ("CustomKeyStoreName", "", "ValidationException"),
        ("CustomKeyStoreName", "n" * 257, "ValidationException"),
        ("XksProxyAuthenticationCredential", {"AccessKeyId": "short", "RawSecretAccessKey": SECRET}, "ValidationException"),
        ("XksProxyAuthenticationCredential", {"AccessKeyId": AKID, "RawSecretAccessKey": "tooshort"}, "ValidationException"),
    ],
)
def test_invalid_input_is_rejected(kms, field, value, code):
    with pytest.raises(ClientError) as e:
        create(kms, **{field: value})
    assert error_code(e) == code
    assert SECRET not in str(e.value)


def test_wrong_credential_and_unknown_host(kms):
    with pytest.raises(ClientError) as e:
        create(kms, XksProxyAuthenticationCredential={"AccessKeyId": AKID, "RawSecretAccessKey": "x" * 44})
    assert error_code(e) == "XksProxyIncorrectAuthenticationCredentialException"
    with pytest.raises(ClientError) as e:
        create(kms, path="/other/kms/xks/v1")
    assert error_code(e) == "XksProxyInvalidConfigurationException"
    with pytest.raises(ClientError) as e:
        create(kms, host="xks-nowhere.example.com")
    assert error_code(e) == "XksProxyUriUnreachableException"


def test_uniqueness(kms):
    create(kms)
    with pytest.raises(ClientError) as e:
        create(kms, host="xks-b.example.com")
    assert error_code(e) == "CustomKeyStoreNameInUseException"
    with pytest.raises(ClientError) as e:
        create(kms, name="store-b")
    assert error_code(e) == "XksProxyUriInUseException"


def test_connect_disconnect_and_state_rules(kms):
    store_id = create(kms)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "CONNECTED")
    with pytest.raises(ClientError) as e:
        kms.update_custom_key_store(CustomKeyStoreId=store_id, XksProxyUriEndpoint="https://xks-b.example.com")
    assert error_code(e) == "CustomKeyStoreInvalidStateException"
    with pytest.raises(ClientError) as e:
        kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert error_code(e) == "CustomKeyStoreInvalidStateException"
    # Online changes are accepted while connected.
    kms.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName="store-renamed")
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "DISCONNECTED")
    with pytest.raises(ClientError) as e:
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    assert error_code(e) == "CustomKeyStoreInvalidStateException"
    kms.update_custom_key_store(CustomKeyStoreId=store_id, XksProxyUriEndpoint="https://xks-b.example.com")
    store = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]
    assert store["XksProxyConfiguration"]["UriEndpoint"] == "https://xks-b.example.com"
    assert store["CustomKeyStoreName"] == "store-renamed"
    kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    with pytest.raises(ClientError) as e:
        kms.describe_custom_key_stores(CustomKeyStoreId=store_id)
    assert error_code(e) == "CustomKeyStoreNotFoundException"


def test_keys_block_deletion(kms):
    store_id = create(kms)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "CONNECTED")
    with pytest.raises(ClientError) as e:
        kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId="ext-key-404")
    assert error_code(e) == "XksKeyNotFoundException"
    key = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId="ext-key-1")
    meta = kms.describe_key(KeyId=key["KeyMetadata"]["KeyId"])["KeyMetadata"]
    assert meta["CustomKeyStoreId"] == store_id
    assert meta["XksKeyConfiguration"]["Id"] == "ext-key-1"
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "DISCONNECTED")
    with pytest.raises(ClientError) as e:
        kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert error_code(e) == "CustomKeyStoreHasCMKsException"
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    with pytest.raises(ClientError) as e:
        kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    assert error_code(e) == "CustomKeyStoreHasCMKsException"


def test_pagination_and_quota(kms):
    ids = {create(kms, name="s0")}
    ids.update(create_unchecked(kms, i) for i in range(1, 10))
    seen = []
    paginator = kms.get_paginator("describe_custom_key_stores")
    pages = list(paginator.paginate(PaginationConfig={"PageSize": 3}))
    for page in pages:
        seen.extend(s["CustomKeyStoreId"] for s in page["CustomKeyStores"])
    assert len(pages) == 4
    assert sorted(seen) == sorted(ids)
    with pytest.raises(ClientError) as e:
        create_unchecked(kms, 10)
    assert error_code(e) == "LimitExceededException"


def create_unchecked(kms, i):
    """A store on a path no proxy serves needs a VPC store (contacted only at
    Connect), so quota and pagination can be tested with many stores."""
    return kms.create_custom_key_store(
        CustomKeyStoreName=f"s{i}",
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyConnectivity="VPC_ENDPOINT_SERVICE",
        XksProxyUriEndpoint=f"https://xks-vpc-{i}.example.com",
        XksProxyUriPath=PATH,
        XksProxyVpcEndpointServiceName=f"com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcde{i:02d}",
        XksProxyAuthenticationCredential={"AccessKeyId": AKID, "RawSecretAccessKey": SECRET},
    )["CustomKeyStoreId"]


def test_describe_by_id_and_name_together_is_invalid(kms):
    create(kms)
    with pytest.raises(ClientError) as e:
        kms.describe_custom_key_stores(CustomKeyStoreId="cks-1234567890abcdef0", CustomKeyStoreName="store-a")
    assert error_code(e) == "ValidationException"

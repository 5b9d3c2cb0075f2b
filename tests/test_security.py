"""TLS, user/password auth, token expiry and RBAC against a real etcd.

Each test class starts its own etcd with the security settings it needs:
TLS certificates are made here with the ``cryptography`` package, auth
and roles are set up with etcdctl (an oracle independent of etcdroute).
The test password must never show up in logs or error messages.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdroute import (
    AuthenticationError,
    Credentials,
    DriverConfig,
    EmbeddedEtcd,
    EtcdStore,
    InvalidArgumentError,
    LinkTable,
    PermissionDeniedError,
    ServerDriver,
    SessionState,
    StoreError,
)
from etcdroute.keys import Keyspace
from etcdroute.store import WatchBatch
from etcdroute.testing import etcdctl

FAST = DriverConfig(
    lease_ttl=2,
    state_interval=0.5,
    workload_interval=0.5,
    fencing_margin=0.3,
    max_backoff=0.5,
)
ROOT_PASSWORD = "r00t-Secret-7f3a"
POD_PASSWORD = "p0d-Secret-91bc"
ROUTER_PASSWORD = "r0uter-Secret-5d2e"
SECRETS = (ROOT_PASSWORD, POD_PASSWORD, ROUTER_PASSWORD)


# ------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key_and_name(
    common_name: str,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return key, name


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make_ca(
    directory: Path, label: str
) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, name = _key_and_name(f"etcdroute test CA {label}")
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def _issue(
    directory: Path,
    label: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    usages: list[x509.ObjectIdentifier],
) -> tuple[Path, Path]:
    key, name = _key_and_name(label)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(usages), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            False,
        )
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path = directory / f"{label}.pem"
    key_path = directory / f"{label}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certs")
    ca, ca_key, ca_cert = _make_ca(directory, "main")
    other_ca, _, _ = _make_ca(directory, "other")
    # etcd's own gateway dials the server with the server certificate,
    # so it must be good for client authentication too.
    server_cert, server_key = _issue(
        directory,
        "server",
        ca_key,
        ca_cert,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    client_cert, client_key = _issue(
        directory, "client", ca_key, ca_cert, [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return Certificates(
        ca, server_cert, server_key, client_cert, client_key, other_ca
    )


def _tls_args(certs: Certificates, client_auth: bool) -> list[str]:
    args = [
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.server_key}",
    ]
    if not client_auth:
        return args
    # A trusted CA file alone already makes etcd ask for client certs.
    return [*args, f"--trusted-ca-file={certs.ca}", "--client-cert-auth"]


# ----------------------------------------------------------------- helpers


def _enable_auth(etcd: EmbeddedEtcd, namespace: str) -> None:
    """root user, a read-write pod role and a read-only router role."""
    prefix = f"etcdroute/{namespace}/"
    steps = [
        ["user", "add", f"root:{ROOT_PASSWORD}"],
        ["user", "add", f"pod:{POD_PASSWORD}"],
        ["user", "add", f"router:{ROUTER_PASSWORD}"],
        ["role", "add", "pod-rw"],
        ["role", "add", "router-ro"],
        [
            "role",
            "grant-permission",
            "pod-rw",
            "readwrite",
            prefix,
            "--prefix",
        ],
        ["role", "grant-permission", "router-ro", "read", prefix, "--prefix"],
        ["user", "grant-role", "pod", "pod-rw"],
        ["user", "grant-role", "router", "router-ro"],
        ["auth", "enable"],
    ]
    for step in steps:
        etcdctl(etcd, *step)


def _driver(
    etcd: EmbeddedEtcd,
    namespace: str,
    credentials: Credentials,
    pod_id: int = 1,
) -> ServerDriver:
    return ServerDriver(
        etcd.endpoints,
        namespace=namespace,
        service="game",
        pod_id=pod_id,
        config=FAST,
        timeout=3.0,
        credentials=credentials,
    )


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_etcd(certificates: Certificates) -> Iterator[EmbeddedEtcd]:
    client = Credentials(
        ca_cert=str(certificates.ca),
        cert_cert=str(certificates.client_cert),
        cert_key=str(certificates.client_key),
    )
    with EmbeddedEtcd(
        unsafe_no_fsync=True,
        client_scheme="https",
        extra_args=_tls_args(certificates, client_auth=True),
        credentials=client,
    ) as etcd:
        yield etcd


def test_tls_with_client_certificate_runs_a_driver(
    tls_etcd: EmbeddedEtcd, certificates: Certificates
) -> None:
    assert tls_etcd.credentials is not None
    namespace = f"tls-{uuid.uuid4().hex[:8]}"
    with _driver(tls_etcd, namespace, tls_etcd.credentials) as driver:
        assert driver.store.describe().startswith("https://")
        assert driver.try_set_linked_pod("u1").created
        # etcdctl over TLS, as an independent oracle.
        out = etcdctl(tls_etcd, "get", "--prefix", "--keys-only", "etcdroute/")
        assert f"etcdroute/{namespace}/links/game/u1" in out


@pytest.mark.parametrize(
    "case", ["plaintext", "no-client-cert", "unknown-server-ca"]
)
def test_tls_refuses_clients_that_cannot_prove_themselves(
    tls_etcd: EmbeddedEtcd, certificates: Certificates, case: str
) -> None:
    credentials = {
        "plaintext": Credentials(),
        "no-client-cert": Credentials(ca_cert=str(certificates.ca)),
        "unknown-server-ca": Credentials(
            ca_cert=str(certificates.other_ca),
            cert_cert=str(certificates.client_cert),
            cert_key=str(certificates.client_key),
        ),
    }[case]
    with (
        EtcdStore(
            tls_etcd.endpoints, timeout=2.0, credentials=credentials
        ) as store,
        pytest.raises(StoreError),
    ):
        store.put("etcdroute/x", b"1")


# --------------------------------------------------- user/password and RBAC


@pytest.fixture(scope="module")
def auth_namespace() -> str:
    return f"auth-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def auth_etcd(auth_namespace: str) -> Iterator[EmbeddedEtcd]:
    # Short simple-token TTL so that expiry (FR16) happens within a test.
    with EmbeddedEtcd(
        unsafe_no_fsync=True,
        extra_args=["--auth-token=simple", "--auth-token-ttl=2"],
    ) as etcd:
        _enable_auth(etcd, auth_namespace)
        yield etcd


def test_fr15_password_auth_on_plaintext_runs_a_driver_with_a_prefix_role(
    auth_etcd: EmbeddedEtcd, auth_namespace: str
) -> None:
    pod = Credentials(user="pod", password=POD_PASSWORD)
    with _driver(auth_etcd, auth_namespace, pod) as driver:
        driver.set_load_state(3)
        driver.set_routing_state("draining")
        driver.set_routing_state("accepting")
        assert driver.try_set_linked_pod("u1").created
        assert driver.ownership.fenced_write(
            "u1", f"etcdroute/{auth_namespace}/data/u1", b"x"
        )
        assert driver.remove_linked_pod("u1")
        lease = driver.lease_id
    # Graceful stop revoked the lease (a limited role may do it).
    out = etcdctl(auth_etcd, "lease", "list", user=f"root:{ROOT_PASSWORD}")
    assert f"{lease:x}" not in out


def test_driver_role_cannot_touch_another_namespace(
    auth_etcd: EmbeddedEtcd, auth_namespace: str
) -> None:
    pod = Credentials(user="pod", password=POD_PASSWORD)
    other = ServerDriver(
        auth_etcd.endpoints,
        namespace="someone-else",
        service="game",
        pod_id=1,
        config=FAST,
        credentials=pod,
    )
    with pytest.raises(PermissionDeniedError):
        other.start()
    other.stop()
    out = etcdctl(
        auth_etcd,
        "get",
        "--prefix",
        "--keys-only",
        "etcdroute/someone-else/",
        user=f"root:{ROOT_PASSWORD}",
    )
    assert out.strip() == ""


def test_driver_refuses_other_namespaces_even_when_etcd_would_allow(
    auth_etcd: EmbeddedEtcd, auth_namespace: str
) -> None:
    root = Credentials(user="root", password=ROOT_PASSWORD)
    with _driver(auth_etcd, auth_namespace, root, pod_id=7) as driver:
        for call in (
            lambda: driver.try_set_linked_pod("u", namespace="other"),
            lambda: driver.remove_linked_pod("u", namespace="other"),
            lambda: driver.get_linked_pod("u", namespace="other"),
        ):
            with pytest.raises(InvalidArgumentError) as caught:
                call()
            assert caught.value.argument == "namespace"


def test_read_only_router_role_reads_and_watches_but_cannot_link(
    auth_etcd: EmbeddedEtcd, auth_namespace: str
) -> None:
    pod = Credentials(user="pod", password=POD_PASSWORD)
    router = Credentials(user="router", password=ROUTER_PASSWORD)
    keyspace = Keyspace("etcdroute", auth_namespace)
    with (
        _driver(auth_etcd, auth_namespace, pod, pod_id=2) as driver,
        EtcdStore(auth_etcd.endpoints, credentials=router) as store,
    ):
        table = LinkTable(store, keyspace)
        pods, revision = table.pods("game")
        assert [p.pod_id for p in pods] == [2]
        batches: list[WatchBatch] = []
        stream = store.watch_prefix(
            keyspace.root,
            start_revision=revision + 1,
            on_batch=batches.append,
            on_error=lambda exc: None,
        )
        try:
            driver.try_set_linked_pod("seen-by-router")
            assert _wait(lambda: _saw(batches, "seen-by-router"), 10)
        finally:
            stream.cancel()
        with pytest.raises(PermissionDeniedError):
            table.try_set("game", "router-claim", 2)
        assert table.get("game", "router-claim") is None


def test_fr16_expired_token_is_renewed_once_and_caller_never_sees_it(
    auth_etcd: EmbeddedEtcd,
    auth_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pod = Credentials(user="pod", password=POD_PASSWORD)
    keyspace = Keyspace("etcdroute", auth_namespace)
    with _driver(auth_etcd, auth_namespace, pod, pod_id=3) as driver:
        lease = driver.lease_id
        batches: list[WatchBatch] = []
        _, revision = driver.store.get(keyspace.root)
        stream = driver.store.watch_prefix(
            keyspace.links_prefix("game"),
            start_revision=revision + 1,
            on_batch=batches.append,
            on_error=lambda exc: None,
        )
        try:
            for round_ in range(2):
                # Let the token expire (TTL 2 s, counted from last use).
                time.sleep(3.5)
                uid = f"after-expiry-{round_}"
                assert driver.try_set_linked_pod(uid).created
                assert _wait(lambda u=uid: _saw(batches, u), 10)
        finally:
            stream.cancel()
        # A watch started on an idle store after its token expired works
        # too (etcd refuses it as "permission denied" until the store
        # authenticates again).
        with EtcdStore(auth_etcd.endpoints, credentials=pod) as idle:
            _, revision = idle.get(keyspace.root)
            time.sleep(3.5)
            late: list[WatchBatch] = []
            stream = idle.watch_prefix(
                keyspace.links_prefix("game"),
                start_revision=revision + 1,
                on_batch=late.append,
                on_error=lambda exc: None,
            )
            try:
                driver.try_set_linked_pod("late")
                assert _wait(lambda: _saw(late, "late"), 10)
            finally:
                stream.cancel()
        # Lease and registration carried on through the expiries.
        assert driver.lease_id == lease
        assert driver.state is SessionState.REGISTERED
    renewals = [
        r for r in caplog.records if "authenticating again" in r.getMessage()
    ]
    assert renewals
    _assert_no_secret(caplog.text)


def test_wrong_password_is_a_clear_error_without_the_secret(
    auth_etcd: EmbeddedEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = Credentials(user="pod", password=ROOT_PASSWORD)
    with pytest.raises(AuthenticationError) as caught:
        EtcdStore(auth_etcd.endpoints, credentials=wrong)
    assert "pod" in str(caught.value)
    _assert_no_secret(str(caught.value))
    _assert_no_secret(repr(caught.value))
    _assert_no_secret(repr(wrong))
    _assert_no_secret(caplog.text)


def test_password_auth_over_tls(
    certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server_only = Credentials(ca_cert=str(certificates.ca))
    namespace = f"tlsauth-{uuid.uuid4().hex[:8]}"
    with EmbeddedEtcd(
        unsafe_no_fsync=True,
        client_scheme="https",
        extra_args=_tls_args(certificates, client_auth=False),
        credentials=server_only,
    ) as etcd:
        _enable_auth(etcd, namespace)
        pod = Credentials(
            user="pod", password=POD_PASSWORD, ca_cert=str(certificates.ca)
        )
        with _driver(etcd, namespace, pod) as driver:
            assert driver.try_set_linked_pod("u1").created
            assert driver.get_linked_pod("u1") is not None
        anonymous = Credentials(ca_cert=str(certificates.ca))
        with (
            EtcdStore(etcd.endpoints, credentials=anonymous) as store,
            pytest.raises(StoreError),
        ):
            store.put(f"etcdroute/{namespace}/x", b"1")
    _assert_no_secret(caplog.text)


def _wait(condition: object, timeout: float) -> bool:
    assert callable(condition)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _saw(batches: list[WatchBatch], uid: str) -> bool:
    return any(
        event.kv.key.endswith(f"/{uid}") and not event.deleted
        for batch in list(batches)
        for event in batch.events
    )

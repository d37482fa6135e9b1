"""Redis over TLS, for real: a throwaway CA signs a server certificate, redis-server (the
OS package, built with TLS) listens on a TLS port only, and the project's writer, the
API's asyncio reader and Feast's SDK all go through the profile's settings
(``redis.ssl``, ``redis.ssl_ca_certs``) to it; a client without the CA is refused."""
from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import anyio
import pandas as pd
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.backoff import NoBackoff
from redis.retry import Retry

import feature_repo
from plumbing.config import load_config
from plumbing.online_store import PRESENT, OnlineStoreReader, OnlineStoreWriter, RedisSettings, redis_client
from serving.online import async_redis_client, read_rows
from transformations.catalog import FEATURE_TABLES

pytestmark = pytest.mark.integration  # it starts a redis-server of its own

TXN = FEATURE_TABLES["user_transaction_features"]
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_pem(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_ca_and_server_cert(directory) -> dict[str, str]:
    """A self-signed CA, and a server certificate it signs for 127.0.0.1 and localhost."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tessera test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_format = (pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return {"ca": _write_pem(directory / "ca.pem", ca_cert.public_bytes(pem)),
            "cert": _write_pem(directory / "server.pem", server_cert.public_bytes(pem)),
            "key": _write_pem(directory / "server.key", server_key.private_bytes(*key_format))}


@pytest.fixture(scope="module")
def tls_cfg(tmp_path_factory):
    """A TLS-only redis-server, and the local profile pointed at it by its settings alone."""
    home = tmp_path_factory.mktemp("redis_tls")
    files = make_ca_and_server_cert(home)
    port = _free_port()
    cfg = load_config("local", environ={**os.environ, "TESSERA__DATA_DIR": str(home / "data"),
                                        "TESSERA__REDIS__PORT": str(port), "TESSERA__REDIS__SSL": "true",
                                        "TESSERA__REDIS__SSL_CA_CERTS": files["ca"],
                                        "TESSERA__REDIS__PASSWORD_ENV": "TESSERA_TEST_TLS_REDIS_PASSWORD"})
    (home / "redis").mkdir()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", files["cert"], "--tls-key-file", files["key"], "--tls-ca-cert-file", files["ca"],
         "--tls-auth-clients", "no", "--requirepass", cfg.redis_password(), "--dir", str(home / "redis"),
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=open(home / "redis.log", "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=cfg.redis_password(), ssl=True, ssl_ca_certs=files["ca"],
                             socket_timeout=2)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = (home / "redis.log").read_text()
                    raise AssertionError(f"redis-server with TLS did not start: {log}") from error
                time.sleep(0.1)
        client.close()
        yield cfg
    finally:
        server.terminate()
        server.wait(timeout=15)


def tiny_batch(users: list[str]) -> pd.DataFrame:
    """One row per user, a minute apart, distinct values (doubles exact in binary)."""
    times = [pd.Timestamp(NOW) - pd.Timedelta(minutes=i) for i in range(len(users))]
    rows = pd.DataFrame({TXN.entity_column: users, TXN.timestamp_column: times})
    for number, feature in enumerate(TXN.features):
        values = [3 + number + i for i in range(len(users))]
        rows[feature.name] = values if feature.dtype == "bigint" else [value / 4 for value in values]
    return rows


def test_the_server_speaks_tls_only_and_refuses_a_client_without_the_ca(tls_cfg):
    port = tls_cfg.redis.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # plain RESP to the TLS port
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        raw.settimeout(5)
        try:
            answer = raw.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"PONG" not in answer and b"NOAUTH" not in answer

    no_ca = redis.Redis(port=port, password=tls_cfg.redis_password(), ssl=True, socket_timeout=5,  # system CAs
                        retry=Retry(NoBackoff(), 0))  # redis-py's default retries for 10 s
    with pytest.raises(redis.ConnectionError) as refused:
        no_ca.ping()
    cause = refused.value.__cause__ or refused.value.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(refused.value), \
        repr(refused.value)

    settings = RedisSettings.from_config(tls_cfg)
    assert settings.ssl and settings.ssl_ca_certs == tls_cfg.redis.ssl_ca_certs
    assert redis_client(settings).ping()


def test_writer_api_reader_and_feast_over_tls(tls_cfg, tmp_path):
    project = f"t_tls_{uuid.uuid4().hex[:8]}"
    users = [f"tls-{i}" for i in range(5)]
    rows = tiny_batch(users)
    assert OnlineStoreWriter(tls_cfg, project=project).write(TXN, rows).written == len(users)

    refs = [f"{TXN.name}:{name}" for name in TXN.feature_names]
    entity_rows = [{"user_id": user} for user in users]
    expected = [[rows.set_index("user_id").loc[user, name] for name in TXN.feature_names] for user in users]

    reader = OnlineStoreReader(tls_cfg, project=project)
    read = reader.read(refs, entity_rows)
    assert [[values[ref].value for ref in refs] for values in read] == expected
    assert {values[ref].status for values in read for ref in refs} == {PRESENT}

    async def api_read():  # the API's own path: its asyncio client and read_rows
        client = async_redis_client(RedisSettings.from_config(tls_cfg))
        try:
            return await read_rows(client, reader, reader.plan(refs), entity_rows, datetime.now(timezone.utc), 10.0)
        finally:
            await client.aclose()

    api_rows = anyio.run(api_read)
    assert [list(rows_of_entity[0].values) for rows_of_entity in api_rows] == expected

    store = feature_repo.apply(tls_cfg, project=project, directory=tmp_path / "feast")
    yaml_text = (tmp_path / "feast" / "feature_store.yaml").read_text()
    assert "ssl=true" in yaml_text and f"ssl_ca_certs={tls_cfg.redis.ssl_ca_certs}" in yaml_text
    from_feast = store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
    assert [[from_feast[name][number] for name in TXN.feature_names] for number in range(len(users))] == expected

"""Test certificates, made per run with cryptography (PyPI) and never
committed: a server CA and a server certificate for localhost/127.0.0.1, a
client CA and a client certificate (CN=pytest-client), and a client
certificate from a CA the server does not know. Used by test_tls.py and
loadtests/tls_overhead.py.
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path  # the server's CA, which clients trust
    server_cert: Path
    server_key: Path
    client_ca: Path  # the CA client certificates must come from
    client_cert: Path  # CN=pytest-client
    client_key: Path
    rogue_cert: Path  # from a CA the server does not know
    rogue_key: Path


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path, key):
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _certificate(subject, public_key, issuer, issuer_key, *, ca, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(folder, stem, issuer_name, issuer_key, common_name, sans=()):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(common_name, key.public_key(), issuer_name, issuer_key, ca=False, sans=sans)
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / f"{stem}.key", key)
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def _ca(folder, stem, common_name):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(common_name, key.public_key(), common_name, key, ca=True)
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / f"{stem}.crt", key


def make_pki(folder: Path) -> Pki:
    ca, ca_key = _ca(folder, "ca", "pytest server CA")
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert, server_key = _issue(folder, "server", "pytest server CA", ca_key, "ferroserve", sans)
    client_ca, client_ca_key = _ca(folder, "clients", "pytest client CA")
    client_cert, client_key = _issue(folder, "client", "pytest client CA", client_ca_key, "pytest-client")
    _, rogue_ca_key = _ca(folder, "rogue-ca", "pytest rogue CA")
    rogue_cert, rogue_key = _issue(folder, "rogue", "pytest rogue CA", rogue_ca_key, "rogue")
    return Pki(folder, ca, server_cert, server_key, client_ca, client_cert, client_key, rogue_cert, rogue_key)

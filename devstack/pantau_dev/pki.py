"""Certificates and keys of the local control plane, made once per state directory.

One CA signs the API server's serving certificate and the client certificates (CN = user,
O = groups, as the API server's x509 authenticator reads them). A separate RSA key signs
ServiceAccount tokens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def ensure(self, clients: dict[str, list[str]], apiserver_ips: list[str]) -> None:
        """Create what is missing: CA, serving cert, SA key, and a client cert per user. The API
        server's certificate names `apiserver_ips` (loopback, the node's address, the Service IP)
        and the in-cluster names of the `kubernetes` Service."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.ca_cert.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pantau-dev-ca")])
            cert = (
                _builder(name, name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        key_cert_sign=True,
                        crl_sign=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
            _write_key(self.ca_key, key)
            self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if not self._names_ips(self.cert("apiserver"), apiserver_ips):  # absent, or made for other IPs
            names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            names.append("kubernetes.default.svc.cluster.local")
            self.issue_serving("apiserver", "kube-apiserver", [], names, apiserver_ips)
        for user, groups in clients.items():
            if not self.cert(user).exists():
                self._issue(user, user, groups, ExtendedKeyUsageOID.CLIENT_AUTH, [])
        if not self.sa_key.exists():
            sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.sa_key, sa)
            self.sa_pub.write_bytes(
                sa.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    @staticmethod
    def _names_ips(cert_file: Path, ips: list[str]) -> bool:
        if not cert_file.exists():
            return False
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        return set(ips) <= have

    def issue_client(self, file: str, common_name: str, groups: list[str]) -> None:
        """A client certificate (CN = user, O = groups), replacing any existing one."""
        self._issue(file, common_name, groups, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def issue_serving(
        self, file: str, common_name: str, groups: list[str], dns: list[str], ips: list[str]
    ) -> None:
        """A serving certificate for `dns` names and `ips`, replacing any existing one."""
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        self._issue(file, common_name, groups, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def _issue(
        self,
        file: str,
        common_name: str,
        groups: list[str],
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _builder(subject, ca.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(self.key(file), key)
        self.cert(file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

"""Certificates and SuperNode keys for a secure Flower deployment (TLS + SuperNode auth).

Three kinds of files, each made where its private half must stay:

* **CA** (``ca.crt`` + ``ca.key``): signs the SuperLink's certificate. ``ca.crt`` is public and
  goes to every SuperNode machine and to whoever runs ``flwr`` commands; ``ca.key`` stays with
  the operator (ideally offline).
* **SuperLink server certificate** (``server.pem`` + ``server.key``): its subject alternative
  names (SANs) list every name and IP that SuperNodes and ``flwr`` use to reach the SuperLink.
  ``localhost`` and ``127.0.0.1`` are always included, because the SuperLink's own SuperExec
  connects back to it over loopback with TLS (even when it binds ``0.0.0.0``), and for demos.
* **SuperNode key pair** (``<name>`` + ``<name>.pub``): an ECDSA key on a NIST curve (P-384 by
  default) in OpenSSH format, the only format Flower 1.42 parses:
  ``flower-supernode --auth-supernode-private-key`` reads it with ``load_ssh_private_key`` and
  ``flwr supernode register`` reads the ``.pub`` with ``load_ssh_public_key`` (EC, NIST curve).
  Make it on the SuperNode machine; only the ``.pub`` travels (to the operator who registers it).

Everything uses the ``cryptography`` package (a Flower dependency); no ``openssl`` needed.

CLI::

    python -m fdkt_flwr.certs ca-and-server --out certs --host superlink.example.org --host 10.0.0.5
    python -m fdkt_flwr.certs node-key site-a --out keys
    python -m fdkt_flwr.certs demo --out certs --node site-a --node site-b   # all at once (demos)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Always in the server certificate: the SuperLink's own SuperExec dials 127.0.0.1 over TLS.
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: SuperNode auth keys: Flower accepts any NIST curve; P-384 is what its docs generate.
NODE_KEY_CURVE: ec.EllipticCurve = ec.SECP384R1()

DEFAULT_DAYS = 365


@dataclass
class CertBundle:
    """Paths of what :func:`make_ca_and_server` / :func:`make_demo_bundle` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (priv, pub)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), created that way (no race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses (IPs must be IPAddress SANs: TLS clients don't match IPs
    against DNS entries); loopback always included; duplicates dropped, order kept."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*LOOPBACK_HOSTS, *hosts):
        host = host.strip().strip("[]")  # accept "[::1]" as written in addresses
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fdkt-flwr"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    # Backdate a little so that a node whose clock is a few minutes behind still accepts it.
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(out_dir: Path, common_name: str = "fdkt-flwr CA",
            days: int = DEFAULT_DAYS * 5) -> tuple[Path, Path]:
    """Create a self-signed CA; returns ``(ca.crt, ca.key)`` in ``out_dir``.

    The key is ECDSA P-384, written 0600 and unencrypted (Flower reads the server key, not
    the CA key; protect ``ca.key`` by keeping it off the SuperLink machine if you can).
    """
    key = ec.generate_private_key(ec.SECP384R1())
    not_before, not_after = _validity(days)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA384()))
    out_dir = Path(out_dir)
    ca_cert, ca_key = out_dir / "ca.crt", out_dir / "ca.key"
    _write_public(ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(ca_key, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return ca_cert, ca_key


def make_server_cert(ca_cert: Path, ca_key: Path, out_dir: Path, hosts: Sequence[str] = (),
                     days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """Issue the SuperLink's TLS certificate; returns ``(server.pem, server.key)``.

    ``hosts``: every DNS name and IP the SuperNodes and the ``flwr`` CLI use to reach the
    SuperLink (``localhost``, ``127.0.0.1`` and ``::1`` are always added). A name missing here
    makes the SuperNode fail the TLS handshake with a hostname mismatch.
    """
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    ca_private = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    if not isinstance(ca_private, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: expected the EC CA key written by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())  # P-256: the most widely supported TLS key
    sans = _san_entries(hosts)
    cn = next((h for h in hosts if h.strip()), "localhost")
    not_before, not_after = _validity(days)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(min(not_after, ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_private.public_key()), critical=False)
            .sign(ca_private, hashes.SHA384()))
    out_dir = Path(out_dir)
    server_cert, server_key = out_dir / "server.pem", out_dir / "server.key"
    _write_public(server_cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(server_key, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return server_cert, server_key


def make_ca_and_server(out_dir: Path, hosts: Sequence[str] = (),
                       days: int = DEFAULT_DAYS) -> CertBundle:
    """A CA and a SuperLink certificate signed by it, in ``out_dir``."""
    ca_cert, ca_key = make_ca(out_dir)
    server_cert, server_key = make_server_cert(ca_cert, ca_key, out_dir, hosts, days)
    return CertBundle(ca_cert, ca_key, server_cert, server_key)


def make_node_keypair(out_dir: Path, name: str, comment: str | None = None) -> tuple[Path, Path]:
    """Create a SuperNode auth key pair ``out_dir/<name>`` (private) and ``<name>.pub``.

    Both in OpenSSH format on P-384, as Flower 1.42 parses them (see the module docstring);
    equivalent to ``ssh-keygen -t ecdsa -b 384 -N '' -f <name>``. The private key is 0600.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"node key name {name!r}: use a plain file name, e.g. 'site-a'")
    key = ec.generate_private_key(NODE_KEY_CURVE)
    priv = Path(out_dir) / name
    pub = priv.with_name(name + ".pub")
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    _write_public(pub, line + f" {comment or name}\n".encode())
    return priv, pub


def make_demo_bundle(out_dir: Path, nodes: Sequence[str], hosts: Sequence[str] = (),
                     days: int = DEFAULT_DAYS) -> CertBundle:
    """Everything in one folder (``out_dir`` for certificates, ``out_dir/keys`` for node keys).

    Convenient for loopback demos and tests. In a real deployment make the node keys on the
    node machines (:func:`make_node_keypair`), so that no private key is ever copied.
    """
    bundle = make_ca_and_server(out_dir, hosts, days)
    for n in nodes:
        bundle.node_keys[n] = make_node_keypair(Path(out_dir) / "keys", n)
    return bundle


def server_cert_hosts(cert_path: Path) -> list[str]:
    """The SAN entries (DNS names and IPs, as strings) of a certificate; for checks and logs."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fdkt_flwr.certs",
        description="TLS certificates and SuperNode auth keys for a Flower deployment.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ca-and-server", help="on the SuperLink machine: CA + server certificate")
    p.add_argument("--out", type=Path, default=Path("certs"))
    p.add_argument("--host", action="append", default=[],
                   help="DNS name or IP of the SuperLink as nodes reach it (repeatable); "
                        "localhost/127.0.0.1/::1 are always added")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS)
    p = sub.add_parser("node-key", help="on a SuperNode machine: its auth key pair")
    p.add_argument("name", help="file name of the key, e.g. site-a (writes NAME and NAME.pub)")
    p.add_argument("--out", type=Path, default=Path("keys"))
    p = sub.add_parser("demo", help="everything in one folder (loopback demos and tests)")
    p.add_argument("--out", type=Path, default=Path("certs"))
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--node", action="append", default=[], help="node key name (repeatable)")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS)
    args = ap.parse_args(argv)
    if args.cmd == "node-key":
        priv, pub = make_node_keypair(args.out, args.name)
        print(f"private key (keep on this machine): {priv}\npublic key (register it): {pub}")
        return 0
    if args.cmd == "ca-and-server":
        b = make_ca_and_server(args.out, args.host, args.days)
    else:
        b = make_demo_bundle(args.out, args.node, args.host, args.days)
    print(f"CA certificate (copy to every SuperNode and flwr user): {b.ca_cert}\n"
          f"CA key (keep private, ideally offline): {b.ca_key}\n"
          f"SuperLink certificate: {b.server_cert} (SANs: "
          f"{', '.join(server_cert_hosts(b.server_cert))})\n"
          f"SuperLink key: {b.server_key}")
    for n, (priv, pub) in b.node_keys.items():
        print(f"node {n}: {priv} (private), {pub} (public)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

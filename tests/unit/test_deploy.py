"""Certificates, node keys and deployment commands: fast checks, no Flower processes started."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fdkt_flwr import certs, deploy


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> certs.CertBundle:
    out = tmp_path_factory.mktemp("certs")
    return certs.make_demo_bundle(out, nodes=["site-a"],
                                  hosts=["superlink.example.org", "10.1.2.3"])


def test_server_certificate_has_the_given_hosts_and_loopback_as_sans(bundle):
    hosts = certs.server_cert_hosts(bundle.server_cert)
    for h in ("superlink.example.org", "10.1.2.3", "localhost", "127.0.0.1", "::1"):
        assert h in hosts
    cert = x509.load_pem_x509_certificate(bundle.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # IPs must be IP SANs (a TLS client never matches an IP against a DNS entry).
    assert "10.1.2.3" not in san.get_values_for_type(x509.DNSName)


def test_server_certificate_is_signed_by_the_ca_and_keys_are_private(bundle):
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(bundle.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (bundle.ca_key, bundle.server_key, bundle.node_keys["site-a"][0]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_tls_handshake_verifies_for_localhost_and_127_0_0_1(bundle):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(bundle.server_cert, bundle.server_key)
    client_ctx = ssl.create_default_context(cafile=str(bundle.ca_cert))
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(2)
        port = srv.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = srv.accept()
                with contextlib.suppress(OSError), \
                        server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        for name in ("localhost", "127.0.0.1"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() is not None
                tls.send(b"x")
        t.join(timeout=5)


def test_node_keys_are_in_the_format_flower_parses(bundle):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    priv_path, pub_path = bundle.node_keys["site-a"]
    # What flower-supernode --auth-supernode-private-key does:
    priv = load_ssh_private_key(priv_path.read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert uses_nist_ec_curve(priv.public_key())
    # What flwr supernode register does (exits on a bad key):
    pub_bytes = try_load_public_key(pub_path)
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert pub_bytes == public_key_to_bytes(priv.public_key())  # the pair matches
    assert pub_path.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_node_key_name_must_be_a_plain_file_name(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        certs.make_node_keypair(tmp_path, "../evil")


def test_superlink_command_is_tls_with_node_auth_and_no_runtime_installs(bundle):
    cmd = deploy.superlink_command(host="0.0.0.0", port=8000, certs=bundle)
    assert "--enable-supernode-auth" in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd
    for flag, path in (("--ssl-ca-certfile", bundle.ca_cert),
                       ("--ssl-certfile", bundle.server_cert),
                       ("--ssl-keyfile", bundle.server_key)):
        assert cmd[cmd.index(flag) + 1] == str(path)


def test_insecure_mode_only_on_loopback(tmp_path):
    assert "--insecure" in deploy.superlink_command(host="127.0.0.1", certs=None)
    with pytest.raises(ValueError, match="only allowed on loopback"):
        deploy.superlink_command(host="0.0.0.0", certs=None)
    with pytest.raises(ValueError, match="only allowed on loopback"):
        deploy.supernode_command(superlink="10.0.0.5:8000", node_config="x=1")
    with pytest.raises(ValueError, match="only allowed on loopback"):
        deploy.write_connection(tmp_path, "link.example.org:8000", None)
    assert deploy.is_loopback("::1") and deploy.is_loopback("localhost")
    assert not deploy.is_loopback("192.168.1.2")


def test_supernode_command_needs_both_ca_and_key(bundle, tmp_path):
    key = bundle.node_keys["site-a"][0]
    with pytest.raises(ValueError, match="both"):
        deploy.supernode_command(superlink="link:8000", node_config="x=1", private_key=key)
    cmd = deploy.supernode_command(superlink="link:8000", node_config=tmp_path / "n.toml",
                                   ca_cert=bundle.ca_cert, private_key=key)
    assert cmd[cmd.index("--root-certificates") + 1] == str(bundle.ca_cert)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    assert "--allow-runtime-dependency-installation" not in cmd


def test_node_config_file_reads_back_as_flower_parses_it(tmp_path):
    from flwr.common.config import parse_config_args

    cfg = {"name": "site-a", "dataset-name": "/data/my site.csv", "text-column": "body",
           "private-size": 24, "ledger-path": "/var/lib/fdkt/ledger.json"}
    path = deploy.write_node_config(tmp_path / "node.toml", cfg)
    assert parse_config_args([str(path)]) == cfg
    assert parse_config_args([deploy.node_config_arg(cfg)]) == cfg


def test_connection_is_merged_into_the_flower_configuration(bundle, tmp_path, monkeypatch):
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n'
                                      '[superlink.local]\naddress = ":local:"\n')
    deploy.write_connection(home, "link.example.org:8000", bundle.ca_cert)
    monkeypatch.setenv("FLWR_HOME", str(home))
    from flwr.cli.flower_config import read_superlink_connection

    conn = read_superlink_connection("fdkt-deploy")
    assert conn.address == "link.example.org:8000"
    assert Path(conn.root_certificates) == bundle.ca_cert.resolve()
    assert not conn.insecure
    assert read_superlink_connection("local").address == ":local:"  # kept
    assert read_superlink_connection(None).address == "link.example.org:8000"  # default


def test_split_address():
    assert deploy.split_address("10.0.0.5:8000") == ("10.0.0.5", 8000)
    assert deploy.split_address("[::1]:9") == ("::1", 9)
    assert deploy.join_address("::1", 9) == "[::1]:9"
    with pytest.raises(ValueError):
        deploy.split_address("no-port")


def test_submit_rejects_a_bad_setting_before_calling_flwr(tmp_path, monkeypatch):
    cli = deploy.FlowerCli(tmp_path)
    monkeypatch.setattr(deploy.FlowerCli, "__call__",
                        lambda *a, **k: pytest.fail("flwr must not be called"))
    with pytest.raises(deploy.DeployError, match=r"slm\.baseline"):
        cli.submit({"slm.baseline": False})
    with pytest.raises(deploy.DeployError, match=r"privacy\.epsilon"):
        cli.submit({"privacy.epsilon": -1.0})


def test_a_flwr_error_answer_becomes_one_readable_line(tmp_path, monkeypatch):
    import subprocess

    answer = ('{"success": false, "error-message": "Using SuperLink: fdkt-deploy '
              '(127.0.0.1:1)\\n\\n[code: 15] Invalid run configuration."}')
    monkeypatch.setattr(deploy.FlowerCli, "__call__", lambda self, *a, **k:
                        subprocess.CompletedProcess(a, 0, answer, ""))
    with pytest.raises(deploy.DeployError, match=r"Invalid run configuration"):
        deploy.FlowerCli(tmp_path).submit({}, validate=False)


def test_run_reports_the_status_from_flwr_list_and_logs_next_to_results(tmp_path, monkeypatch):
    cli = deploy.FlowerCli(tmp_path / "home")
    monkeypatch.setattr(cli, "submit", lambda overrides, app_dir, validate: 7)

    def follow(run_id, timeout, on_line):
        on_line("[server] round 1 done\n")
        return True

    monkeypatch.setattr(cli, "follow", follow)
    monkeypatch.setattr(cli, "wait_finished", lambda run_id, timeout: ("finished:failed", "boom"))
    out = tmp_path / "out"
    outcome = cli.run({"output-dir": str(out)}, timeout=5)
    assert (outcome.run_id, outcome.status, outcome.details) == (7, "finished:failed", "boom")
    assert not outcome.ok
    assert outcome.results_path == out / "results.json"
    assert "round 1 done" in (out / "flwr_run.log").read_text()


def test_flower_processes_find_this_venvs_commands_without_an_activated_venv(tmp_path,
                                                                             monkeypatch):
    # CI runs `.venv/bin/python -m pytest` with no activated venv; the SuperLink then starts
    # `flower-superexec` by name, which must resolve to this interpreter's bin directory.
    import shutil

    from fdkt_flwr.launcher import BIN, flower_env

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for env in (flower_env(tmp_path), deploy.base_env(tmp_path, marker="m")):
        found = shutil.which("flower-superexec", path=env["PATH"])
        assert found is not None and Path(found).parent == BIN
        assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert deploy.base_env(tmp_path, marker="m")[deploy.MARKER_ENV] == "m"

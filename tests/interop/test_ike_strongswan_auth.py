"""espresso's authentication policy against strongSwan 5.9 (charon + kernel-libipsec) in network namespaces.

What a strongSwan administrator states, and what must then happen, as swanctl.conf(5) documents it:

- charon requires RSASSA-PSS with SHA-384 (``ike:rsa/pss-sha384``) or an ECDSA key of at least 384 bits
  (``ecdsa-384``); espresso, configured the same way (``auth``/``remote_auth``), signs what charon requires
  and requires it back, as initiator and as responder;
- espresso requires what charon's key or signature does not meet: AUTHENTICATION_FAILED, and a log line that
  names the constraint;
- charon's certificate is issued by an intermediate CA that espresso holds (``[pki] intermediates``) but does
  not trust: the path goes up to the configured root, whose CRL revokes one intermediate (refused) and not the
  other (established); espresso's CERTREQ names the root only;
- ``revocation = strict | ifuri | relaxed`` with a CRL served over HTTP, a CRL distribution point on a closed
  loopback port, and no distribution point at all.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.interop import strongswan as ss
from tests.interop.test_ike_strongswan import (  # noqa: F401 - lab is a fixture
    CONF,
    E_INNER,
    S_INNER,
    TIMEOUT,
    Espresso,
    _ping,
    _wait,
    lab,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

IKE, ESP = "aes256gcm16-prfsha384-ecp384", "aes256gcm16"


def _conf(peer_lines: str) -> str:
    return CONF.replace('ike_proposals = ["{ike}"]', 'ike_proposals = ["{ike}"]\n' + peer_lines)


SCHEMES = [
    # (id, LabPki kind, charon local.auth, charon remote.auth, espresso auth, espresso remote_auth, what charon
    #  logs for espresso's AUTH, what espresso records for charon's)
    pytest.param("rsa", "ike:rsa/pss-sha384", "ike:rsa/pss-sha384", "rsa/pss-sha384", "ike:rsa/pss-sha384",
                 "RSA_EMSA_PSS_SHA2_384_SALT_48", "signature(rsa-pss-sha2_384)", id="pss-sha384"),
    pytest.param("ecdsa384", "pubkey", "ecdsa-384", "ecdsa-384", "ecdsa-384",
                 "ECDSA_WITH_SHA384_DER", "signature(ecdsa-sha2_384)", id="ecdsa-p384"),
]


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("kind,ch_local,ch_remote,e_auth,e_remote,charon_sees,espresso_sees", SCHEMES)
def test_required_signature_both_ways(lab: ss.Lab, tmp_path: Path, role: str, kind: str, ch_local: str,
                                      ch_remote: str, e_auth: str, e_remote: str, charon_sees: str,
                                      espresso_sees: str) -> None:
    """charon requires a scheme and key (remote.auth) and signs with one (local.auth); espresso, given the
    same constraints, signs what charon requires and accepts what charon signs, either side initiating."""
    from ike.events import IkeSaEstablished

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        site_e.netns.run(["ip", "addr", "del", f"{E_INNER}/32", "dev", "lo"])
        pki = ss.LabPki(kind)
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        ch.connections.append(ss.Connection(
            "gw", site_s.outer, site_e.outer, "s.test", "e.test", ch.add_credential(pki.issue("s", "s.test")),
            [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)], proposals=IKE,
            local_auth=ch_local, remote_auth=ch_remote))
        ch.start()
        conf = _conf(f'auth = "{e_auth}"\nremote_auth = "{e_remote}"')
        e = Espresso(lab, site_e, site_s, pki, IKE, ESP, tmp_path / "espresso", conf=conf)
        await e.start()
        try:
            await e.establish(ch, role)
            assert f"authentication of 'e.test' with {charon_sees} successful" in ch.log(), ch.tail()
            (est,) = e.events(IkeSaEstablished)
            assert est.auth_method == espresso_sees
            assert " 0% packet loss" in await _ping(site_s)
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


def test_unconstrained_espresso_is_refused_by_a_pss_peer(lab: ss.Lab, tmp_path: Path) -> None:
    """Without ``auth = "rsa/pss-sha384"`` espresso signs PKCS#1 v1.5 with the first hash charon announced,
    and charon (``ike:rsa/pss-sha384``) refuses it: the failure issue 14 reports, kept as the control."""
    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki("rsa")
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        ch.connections.append(ss.Connection(
            "gw", site_s.outer, site_e.outer, "s.test", "e.test", ch.add_credential(pki.issue("s", "s.test")),
            [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)], proposals=IKE,
            remote_auth="ike:rsa/pss-sha384"))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, IKE, ESP, tmp_path / "espresso")
        await e.start()
        try:
            from ike.daemon import ControlError
            with pytest.raises(ControlError, match="authentication failed"):
                await e.daemon.initiate_and_wait("s", timeout=TIMEOUT)
            assert "constraint check failed" in ch.log() or "not acceptable" in ch.log(), ch.tail()
            assert not e.installed()
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


REFUSED = [
    # (role, LabPki kind of charon's key, espresso remote_auth, what the log line must say)
    pytest.param("responder", "ecdsa", "ecdsa-384", "peer key is ecdsa-256", id="responder-ecdsa384-vs-p256"),
    pytest.param("initiator", "rsa", "ike:rsa/pss-sha384", "peer signed with rsa-pkcs1-sha256",
                 id="initiator-pss-vs-pkcs1"),
    pytest.param("initiator", "rsa", "rsa-3072", "peer key is rsa-2048", id="initiator-rsa3072-vs-2048"),
]


@pytest.mark.parametrize("role,kind,e_remote,why", REFUSED)
def test_espresso_refuses_a_weaker_peer(lab: ss.Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture, role: str,
                                        kind: str, e_remote: str, why: str) -> None:
    """espresso requires what charon's key or signature does not meet: AUTHENTICATION_FAILED, nothing
    installed, and one log line naming the constraint and what the peer used."""
    from ike.events import AuthenticationFailed

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        pki = ss.LabPki(kind)
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(pki.ca)
        ch.connections.append(ss.Connection(
            "gw", site_s.outer, site_e.outer, "s.test", "e.test", ch.add_credential(pki.issue("s", "s.test")),
            [ss.Child("net", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)], proposals=IKE))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, IKE, ESP, tmp_path / "espresso",
                     conf=_conf(f'remote_auth = "{e_remote}"'))
        await e.start()
        try:
            if role == "initiator":
                from ike.daemon import ControlError
                with pytest.raises(ControlError):
                    await e.daemon.initiate_and_wait("s", timeout=TIMEOUT)
            else:
                proc = await asyncio.to_thread(ch.initiate, "net", ike="gw", timeout=10)
                assert proc.returncode != 0
                await _wait(lambda: "received AUTHENTICATION_FAILED notify error" in ch.log(),
                            "charon to receive AUTHENTICATION_FAILED", ch)
            (failed,) = [ev for ev in e.events(AuthenticationFailed) if ev.local_side]
            assert f"constraint remote_auth = {e_remote} failed: {why}" in failed.reason, failed
            assert not e.installed() and len(e.daemon.dataplane.sad) == 0
        finally:
            await e.daemon.stop(delete=False)

    with caplog.at_level(logging.WARNING, logger="ike.auth"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "ike.auth"]
    assert any(f"constraint remote_auth = {e_remote} failed: {why}" in m for m in lines), lines


INTERMEDIATE_CONF = CONF.replace('revocation = "disable"', 'revocation = "crl"').replace(
    "[certificates.me]", """[pki]
fetch_revocation = false
intermediates = ["sub-good.pem", "sub-bad.pem"]
crls = ["root.crl", "sub-good.crl", "sub-bad.crl"]

[certificates.me]""").replace('ike_proposals = ["{ike}"]', 'ike_proposals = ["{ike}"]\nrevocation = "strict"')


def test_intermediate_held_not_trusted(lab: ss.Lab, tmp_path: Path) -> None:
    """charon sends only its leaf, issued by an intermediate espresso holds but does not trust; the root's CRL
    (a local file) revokes one intermediate: refused as revoked; the other: established. espresso's CERTREQ
    names the root only (charon knows no intermediate, and reports none as unknown)."""
    from ike.events import AuthenticationFailed

    pem = serialization.Encoding.PEM

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        root = ss.LabPki("ecdsa", name="root CA")
        good_ca, bad_ca = root.intermediate("sub good"), root.intermediate("sub bad")
        work = tmp_path / "espresso"
        work.mkdir()
        (work / "sub-good.pem").write_bytes(good_ca.ca.cert_pem())
        (work / "sub-bad.pem").write_bytes(bad_ca.ca.cert_pem())
        (work / "root.crl").write_bytes(root.crl([bad_ca.ca.cert]).public_bytes(pem))
        (work / "sub-good.crl").write_bytes(good_ca.crl([]).public_bytes(pem))
        (work / "sub-bad.crl").write_bytes(bad_ca.crl([]).public_bytes(pem))
        ch = lab.charon(site_s, "charon", log_levels={"ike": 2, "cfg": 2})
        ch.add_ca(root.ca)
        for name, ca in (("bad", bad_ca), ("gw", good_ca)):
            ch.connections.append(ss.Connection(
                name, site_s.outer, site_e.outer, "s.test", "e.test",
                ch.add_credential(ca.issue(f"s-{name}", "s.test")),
                [ss.Child(f"net-{name}", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)], proposals=IKE))
        ch.start()
        e = Espresso(lab, site_e, site_s, root, IKE, ESP, work, conf=INTERMEDIATE_CONF)
        await e.start()
        try:
            proc = await asyncio.to_thread(ch.initiate, "net-bad", ike="bad", timeout=10)
            assert proc.returncode != 0
            await _wait(lambda: "received AUTHENTICATION_FAILED notify error" in ch.log(),
                        "charon to receive AUTHENTICATION_FAILED", ch)
            (failed,) = e.events(AuthenticationFailed)
            assert failed.local_side and "revoked" in failed.reason and "sub bad" in failed.reason, failed
            assert not e.installed()

            proc = await asyncio.to_thread(ch.initiate, "net-gw", ike="gw", timeout=10)
            assert proc.returncode == 0, proc.stdout + ch.tail()
            await _wait(lambda: e.installed(), "the CHILD_SA through the good intermediate", ch)
            assert " 0% packet loss" in await _ping(site_s)
            log = ch.log()
            assert 'received cert request for "O=espresso interop, CN=root CA ecdsa"' in log, ch.tail()
            assert "received cert request for unknown ca" not in log, ch.tail()
        finally:
            await e.daemon.stop(delete=False)

    asyncio.run(main())


# -- revocation = strict | ifuri | relaxed ----------------------------------------------------------------


@contextlib.contextmanager
def crl_server(der: bytes, netns: ss.Netns | None = None) -> Iterator[str]:
    """A loopback HTTP server answering every GET with the CRL (the distribution point that works); in
    ``netns`` when given (for charon to fetch from), else on this host's loopback (for espresso)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/pkix-crl")
            self.send_header("Content-Length", str(len(der)))
            self.end_headers()
            self.wfile.write(der)

        def log_message(self, *args: object) -> None:
            pass

    if netns is None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.socket.close()
        (server.socket,) = ss.netns_sockets(netns, [("127.0.0.1", 0)], tcp=True)
        server.server_address = server.socket.getsockname()
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ca.crl"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def closed_port_url() -> str:
    """A CRL distribution point on a loopback port nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ca.crl"


POLICIES = ("strict", "ifuri", "relaxed")
#: swanctl.conf(5): strict fails unless the status is known (good); ifuri fails only when a CRL/OCSP URI is
#: available but checking fails; relaxed fails only when the certificate is revoked.
EXPECTED = {
    ("strict", "reach"): True, ("ifuri", "reach"): True, ("relaxed", "reach"): True,
    ("strict", "dead"): False, ("ifuri", "dead"): False, ("relaxed", "dead"): True,
    ("strict", "none"): False, ("ifuri", "none"): True, ("relaxed", "none"): True,
}


def _revocation_conf() -> str:
    peers = []
    for pol in POLICIES:
        for where in ("reach", "dead", "none"):
            peers.append(f"""
[peers.{pol}-{where}]
local_addr = "{{local}}"
remote_addr = "{{remote}}"
remote_id = "{where}.test"
ike_proposals = ["{{ike}}"]
revocation = "{pol}"

[peers.{pol}-{where}.children.net]
local_ts = ["{{e_inner}}/32"]
remote_ts = ["{{s_inner}}/32"]
esp_proposals = ["{{esp}}"]
""")
    head = CONF.split("[peers.s]")[0].replace('revocation = "disable"', 'revocation = "crl"')
    return head + "".join(peers)


def test_revocation_policies(lab: ss.Lab, tmp_path: Path) -> None:
    """One charon with three certificates (CDP served, CDP on a closed port, no CDP) and nine espresso peers
    (strict/ifuri/relaxed for each): each attempt establishes or fails as swanctl.conf(5) says."""
    from ike.daemon import ControlError
    from ike.events import AuthenticationFailed

    async def main(url: str) -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        site_e.netns.run(["ip", "addr", "del", f"{E_INNER}/32", "dev", "lo"])
        ch = lab.charon(site_s, "charon", log_levels={"ike": 1, "cfg": 1})
        ch.add_ca(pki.ca)
        urls = {"reach": url, "dead": closed_port_url(), "none": None}
        for where, cdp in urls.items():
            ch.connections.append(ss.Connection(
                where, site_s.outer, site_e.outer, f"{where}.test", "e.test",
                ch.add_credential(pki.issue(f"s-{where}", f"{where}.test", crl_url=cdp)),
                [ss.Child(f"net-{where}", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)], proposals=IKE))
        ch.start()
        e = Espresso(lab, site_e, site_s, pki, IKE, ESP, tmp_path / "espresso", conf=_revocation_conf())
        await e.start()
        outcomes: dict[tuple[str, str], bool | str] = {}
        try:
            for pol, where in EXPECTED:
                name = f"{pol}-{where}"
                try:
                    r = await e.daemon.initiate_and_wait(name, timeout=TIMEOUT)
                except ControlError as exc:
                    outcomes[(pol, where)] = False
                    failed = [ev for ev in e.events(AuthenticationFailed) if ev.peer == name]
                    assert failed and "revocation" in failed[-1].reason.lower(), (name, str(exc), failed)
                    assert pol in failed[-1].reason, failed[-1]
                    continue
                outcomes[(pol, where)] = r["state"] == "ESTABLISHED"
                assert " 0% packet loss" in await _ping(site_s), name
                (sa,) = [s for s in e.daemon.list_sas() if s["state"] == "ESTABLISHED"]
                e.daemon.terminate(sa["ike_id"])
                await _wait(lambda: not e.installed() and not any(
                    s["state"] == "ESTABLISHED" for s in e.daemon.list_sas()), f"{name} to go", ch)
        finally:
            await e.daemon.stop(delete=False)
        assert outcomes == EXPECTED

    pki = ss.LabPki("ecdsa")
    with crl_server(pki.crl([]).public_bytes(serialization.Encoding.DER)) as url:
        asyncio.run(main(url))


def _charon_revocation_conf(where_certs: dict[str, str]) -> str:
    """espresso: one certificate per situation, one peer per (policy, situation) towards charon's matching
    connection; espresso itself does not check charon's certificate's revocation here."""
    certs = "".join(f"""
[certificates.{where}]
cert = "{name}.pem"
key = "{name}.key"
""" for where, name in where_certs.items())
    peers = "".join(f"""
[peers.{pol}-{where}]
local_addr = "{{local}}"
remote_addr = "{{remote}}"
remote_id = "s-{pol}.test"
certificate = "{where}"
ike_proposals = ["{{ike}}"]

[peers.{pol}-{where}.children.net]
local_ts = ["{{e_inner}}/32"]
remote_ts = ["{{s_inner}}/32"]
esp_proposals = ["{{esp}}"]
""" for pol in POLICIES for where in where_certs)
    head = CONF.split("[certificates.me]")[0]
    return head + certs + peers


def test_charon_revocation_policies_agree(lab: ss.Lab, tmp_path: Path) -> None:
    """The oracle for the table above: charon's own ``remote.revocation`` (strict/ifuri/relaxed, CRLs fetched
    with its curl plugin) judging espresso's certificates in the same three situations gives the same
    outcomes that espresso gives for charon's."""
    from ike.daemon import ControlError

    async def main() -> None:
        site_e, site_s = lab.pair(inner_a=E_INNER, inner_b=S_INNER)
        site_e.netns.run(["ip", "addr", "del", f"{E_INNER}/32", "dev", "lo"])
        pki = ss.LabPki("ecdsa")
        work = tmp_path / "espresso"
        work.mkdir()
        with crl_server(pki.crl([]).public_bytes(serialization.Encoding.DER), site_s.netns) as url:
            # nothing listens on port 9 in charon's fresh namespace: connection refused at once
            cdps = {"reach": url, "dead": "http://127.0.0.1:9/ca.crl", "none": None}
            for where, cdp in cdps.items():
                cred = pki.issue(f"e-{where}", f"e-{where}.test", crl_url=cdp)
                (work / f"e-{where}.pem").write_bytes(cred.cert_pem())
                cred.write_key(work / f"e-{where}.key")
            ch = lab.charon(site_s, "charon", log_levels={"ike": 1, "cfg": 2}, plugins=ss.PLUGINS + " curl")
            ch.add_ca(pki.ca)
            for pol in POLICIES:
                cert = ch.add_credential(pki.issue(f"s-{pol}", f"s-{pol}.test"))
                for where in cdps:
                    ch.connections.append(ss.Connection(
                        f"{pol}-{where}", site_s.outer, site_e.outer, f"s-{pol}.test", f"e-{where}.test", cert,
                        [ss.Child(f"net-{pol}-{where}", f"{S_INNER}/32", f"{E_INNER}/32", esp_proposals=ESP)],
                        proposals=IKE, remote_extra=f"revocation = {pol}"))
            ch.start()
            conf = _charon_revocation_conf({w: f"e-{w}" for w in cdps})
            e = Espresso(lab, site_e, site_s, pki, IKE, ESP, work, conf=conf)
            await e.start()
            outcomes: dict[tuple[str, str], bool] = {}
            try:
                for pol, where in EXPECTED:
                    try:
                        r = await e.daemon.initiate_and_wait(f"{pol}-{where}", timeout=TIMEOUT)
                    except ControlError:
                        outcomes[(pol, where)] = False
                        continue
                    outcomes[(pol, where)] = r["state"] == "ESTABLISHED"
                    (sa,) = [s for s in e.daemon.list_sas() if s["state"] == "ESTABLISHED"]
                    e.daemon.terminate(sa["ike_id"])
                    await _wait(lambda: not e.installed() and not any(
                        s["state"] == "ESTABLISHED" for s in e.daemon.list_sas()), f"{pol}-{where} to go", ch)
            finally:
                await e.daemon.stop(delete=False)
            log = ch.log()
        assert outcomes == EXPECTED, log[-4000:]
        assert "fetching crl from 'http://127.0.0.1:9/ca.crl'" in log and f"fetching crl from '{url}'" in log

    asyncio.run(main())

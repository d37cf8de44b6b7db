"""CLI messages and output: subject syntax, whole error texts, CRL on a terminal, no passphrase where no key is
needed, key pairs without certificate in ``show``."""

from __future__ import annotations

import sys

import pytest

from pki.__main__ import main
from tests.pki.conftest import run


def test_bad_subject_says_what_a_subject_looks_like(lab, capsys):
    rc, _, err = run(capsys, "ca", "--ca", "ca", "init", "--subject", "garbage")
    assert rc == 1 and "CN=r1,O=Example,C=US" in err and "ValueError" not in err and err.count("\n") == 1


def test_corrupt_pem_error_is_whole(lab, capsys):
    (lab / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBxx==\n-----END CERTIFICATE-----\n")
    rc, _, err = run(capsys, "--store", "st", "verify", "--filename", "bad.pem")
    assert rc == 1 and "https://" not in err
    assert err.rstrip().endswith(")") and "Unable to load PEM file" in err


def test_ca_crl_refuses_binary_on_a_terminal(lab, capsys, monkeypatch):
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R")[0] == 0
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    rc, out, err = run(capsys, "ca", "--ca", "ca", "crl")
    assert rc == 1 and "--out" in err and out == ""
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "crl", "--pem")
    assert rc == 0 and out.startswith("-----BEGIN X509 CRL-----")
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "crl", "--out", "crl.der")
    assert rc == 0 and (lab / "crl.der").read_bytes()[:1] == b"\x30"


def _issued(lab, capsys, encrypted: bool):
    S = ["--store", "st"] + (["--passphrase-file", "pp"] if encrypted else [])
    (lab / "pp").write_text("key pass\n")
    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=Root")[0] == 0
    assert run(capsys, "--store", "st", "ca-profile", "add", "lab", "--revocation-check", "disable")[0] == 0
    assert run(capsys, "--store", "st", "ca-certificate", "load", "--ca-profile", "lab", "--filename", "ca/ca.pem")[0] == 0
    assert run(capsys, *S, "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")[0] == 0
    assert run(capsys, *S, "generate-certificate-request", "--certificate-id", "r1", "--subject", "CN=r1",
               "--filename", "r1.csr")[0] == 0
    (lab / "st" / "local" / "r1" / "request.pem").unlink()  # public.pem alone must suffice
    assert run(capsys, "ca", "--ca", "ca", "issue", "--csr", "r1.csr", "--out", "r1.pem")[0] == 0


def test_load_and_verify_need_no_passphrase(lab, capsys):
    _issued(lab, capsys, encrypted=True)
    rc, out, err = run(capsys, "--store", "st", "local-certificate", "load", "--certificate-id", "r1",
                       "--filename", "r1.pem")
    assert rc == 0, err
    rc, out, err = run(capsys, "--store", "st", "verify", "--certificate-id", "r1", "--offline")
    assert rc == 0 and out.startswith("OK: CN=r1"), err


def test_show_key_pair_without_certificate(lab, capsys):
    (lab / "pp").write_text("key pass\n")
    assert run(capsys, "--store", "st", "--passphrase-file", "pp", "generate-key-pair", "--certificate-id", "k1",
               "--type", "ecdsa", "--size", "384")[0] == 0
    rc, out, _ = run(capsys, "--store", "st", "show", "local-certificate")
    assert rc == 0
    assert "Certificate identifier: k1" in out and "key pair only" in out and "ecdsa (384 bits)" in out


def _walk(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_verb_and_option_has_help():
    from pki.__main__ import build_parser

    missing = []
    for path, parser in _walk(build_parser()):
        if path and not parser.description:
            missing.append(" ".join(path))
        for action in parser._actions:
            if not action.help and action.dest != "help":
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_states_key_size_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["generate-key-pair", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "2048" in out and "3072 or 4096" in out and "384 or 521" in out

"""Test certificates made with the openssl command: a CA and a server certificate it signs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _run(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)
    except FileNotFoundError:
        raise AssertionError("the TLS tests need the openssl command on PATH") from None


def make_pki(folder: Path, *, host: str = "localhost", days: int = 30,
             name: str = "test") -> Pki:
    """A CA, and a certificate for ``host`` signed by it, valid for ``days`` days (a negative
    number makes an already expired one)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / f"{name}-ca.key", folder / f"{name}-ca.pem"
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n")
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
         str(ca_cert), "-days", "30", "-subj", f"/CN={name} test CA", cwd=folder)
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={host}", cwd=folder)
    # days < 0 gives a certificate that expired before it was made (notAfter < notBefore)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", str(days), "-extfile", str(ext),
         cwd=folder)
    return Pki(ca_cert, cert, key)

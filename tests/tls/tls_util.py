"""Shared by the TLS tests: a throwaway PKI made once per process by
make_certs.sh (openssl req/x509 in a temporary folder), and an ssl context
of the Python standard library that trusts it.

  certs()          the folder: ca.pem, server.pem/.key (localhost,
                   127.0.0.1), other.pem (other.example), expired.pem,
                   rogue-ca.pem and rogue.pem (another CA), client.pem/.key,
                   rogue-client.pem/.key, spki.txt (see make_certs.sh)
  client_context() an SSLContext trusting ca.pem, verifying names
  daemon_args()    the trainbusd options for TLS with server.pem
"""
import os
import ssl
import subprocess
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
_dir = None
# Tests start daemons from several threads (a reference run in the
# background): one PKI per process, made once.
_lock = threading.Lock()


def certs():
    global _dir
    with _lock:
        if _dir is None:
            d = tempfile.mkdtemp(prefix="tb-tls-")
            r = subprocess.run(["sh", os.path.join(HERE, "make_certs.sh"), d],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise AssertionError("make_certs.sh failed:\n" + r.stderr)
            _dir = d
        return _dir


def path(name):
    return os.path.join(certs(), name)


def daemon_args(cert="server", client_ca=False):
    a = ["--tls-cert", path(cert + ".pem"), "--tls-key", path(cert + ".key")]
    if client_ca:
        a += ["--tls-client-ca", path("ca.pem")]
    return a


def client_context(cafile="ca.pem", cert=None):
    ctx = ssl.create_default_context(cafile=path(cafile))
    if cert:
        ctx.load_cert_chain(path(cert + ".pem"), path(cert + ".key"))
    return ctx

#!/bin/sh
# Makes a throwaway PKI for the TLS tests in DIR (created if needed), with the
# openssl command line (Debian's openssl package), EC P-256 keys:
#   ca.pem ca.key            the test CA
#   server.pem server.key    a server certificate from it for localhost and
#                            127.0.0.1 (subjectAltName DNS:localhost, IP:127.0.0.1)
#   other.pem other.key      from the same CA, for other.example only (a wrong
#                            host name when the client connects to 127.0.0.1)
#   expired.pem expired.key  from the same CA, for localhost and 127.0.0.1, but
#                            its notAfter is a day in the past
#   rogue-ca.pem rogue.pem rogue.key  another CA and a server certificate from it
#                            for localhost and 127.0.0.1 (an untrusted issuer)
#   client.pem client.key    a client certificate from the test CA (CN=trainbus-client)
#   rogue-client.pem rogue-client.key  a client certificate from the other CA
#   spki.txt                 base64 SHA-256 of server.pem's public key (Chromium's
#                            --ignore-certificate-errors-spki-list pins it)
# Usage: make_certs.sh DIR. Prints nothing on success; exit 1 with openssl's
# message otherwise.
set -eu
dir=${1:?usage: make_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
log=openssl.log
: >"$log"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>>"$log"; }
ca() { # NAME CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>>"$log"
}
leaf() { # NAME CA CN DAYS EXT
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>>"$log"
  printf '%s\nbasicConstraints=CA:FALSE\n' "$5" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days "$4" -extfile "$1.ext" 2>>"$log"
  rm -f "$1.csr" "$1.ext"
}
{
  ca ca "trainbus test CA"
  ca rogue-ca "another CA"
  srv="subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
  leaf server ca localhost 2 "$srv"
  leaf expired ca localhost -1 "$srv"
  leaf other ca other.example 2 "subjectAltName=DNS:other.example
extendedKeyUsage=serverAuth"
  leaf rogue rogue-ca localhost 2 "$srv"
  leaf client ca trainbus-client 2 "extendedKeyUsage=clientAuth"
  leaf rogue-client rogue-ca trainbus-client 2 "extendedKeyUsage=clientAuth"
  openssl x509 -in server.pem -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | openssl base64 >spki.txt
} || { cat "$log" >&2; exit 1; }
chmod 600 ./*.key

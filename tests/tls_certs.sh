#!/bin/sh
# Make the test PKI in DIR with the openssl command (no key is committed):
#   ca.pem ca.key         a test CA
#   server.pem server.key  CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1 (signed by ca)
#   other.pem other.key    CN=other.test, SAN DNS:other.test, DNS:*.wild.test (signed by ca; SNI)
#   client.pem client.key  CN=goev-client,O=goev tests (signed by ca; client auth)
#   expired.pem expired.key  CN=localhost, SAN as server, not valid any more (signed by ca)
#   rogue.pem rogue.key    self-signed CN=localhost, SAN as server (no CA trusts it)
# EC P-256 keys: quick to make.  Usage: tests/tls_certs.sh DIR
set -eu
d=$1
mkdir -p "$d"
cd "$d"
[ -s rogue.pem ] && exit 0
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
san_local="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 30 -subj "/CN=goev test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
sign() {  # name subject ext days [startdate]
    key "$1.key"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\nbasicConstraints=CA:FALSE\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
        -days "$4" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
sign server "/CN=localhost" "$san_local" 30
sign other "/CN=other.test" "subjectAltName=DNS:other.test,DNS:*.wild.test" 30
sign client "/O=goev tests/CN=goev-client" "extendedKeyUsage=clientAuth" 30
# Expired: valid for the 2 days ending yesterday (x509 -req cannot backdate,
# so a CA-signed one comes from openssl ca's -startdate/-enddate).
key expired.key
openssl req -new -key expired.key -out expired.csr -subj "/CN=localhost" 2>/dev/null
mkdir -p ca.db
: > ca.db/index.txt
printf '1000\n' > ca.db/serial
cat > ca.db/ca.cnf <<CNF
[ ca ]
default_ca = test
[ test ]
dir = ca.db
database = ca.db/index.txt
serial = ca.db/serial
new_certs_dir = ca.db
default_md = sha256
policy = anything
copy_extensions = none
[ anything ]
commonName = supplied
[ ext ]
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
basicConstraints = CA:FALSE
CNF
openssl ca -batch -config ca.db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
    -startdate 20200101000000Z -enddate 20200103000000Z -extensions ext -notext 2>/dev/null
rm -rf expired.csr ca.db
key rogue.key
openssl req -x509 -new -key rogue.key -out rogue.pem -days 30 -subj "/CN=localhost" -addext "$san_local" 2>/dev/null

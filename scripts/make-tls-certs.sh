#!/bin/sh
# Makes the broker's TLS certificates for the lamps' listener (8883, deploy/mosquitto/mosquitto.conf):
# a private CA and a server certificate it signs, whose subjectAltName lists every name and
# address the lamps use to reach this broker. Lamps trust the CA (bridge_cafile), so the server
# certificate can be renewed without touching a lamp.
#
#   scripts/make-tls-certs.sh OUT_DIR [NAME_OR_IP ...]      (default names: localhost 127.0.0.1)
#
# Writes OUT_DIR/ca.crt, ca.key, server.crt, server.key. An existing CA is kept (lamps already
# trust it); the server certificate is made anew. Needs only openssl. secrets-init runs it at
# compose start when OUT_DIR has no server certificate yet (TLS_SERVER_NAMES).
set -eu

[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [NAME_OR_IP ...]" >&2; exit 2; }
out=$1
shift
[ $# -ge 1 ] || set -- localhost 127.0.0.1
command -v openssl > /dev/null || { echo "make-tls-certs: openssl is required: install it (apt-get install openssl)" >&2; exit 1; }

umask 077
mkdir -p "$out"
days_ca=3650
days_server=825 # the longest validity clients such as Apple's accept for a server certificate

if [ ! -f "$out/ca.crt" ] || [ ! -f "$out/ca.key" ]; then
  openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days "$days_ca" \
    -subj "/CN=lampi-ingest broker CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2> /dev/null
fi

san=""
for name in "$@"; do
  # An address goes in as IP:, anything else as DNS: (hostname verification checks the right one).
  if printf '%s' "$name" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}$|:'; then entry="IP:$name"; else entry="DNS:$name"; fi
  san="${san:+$san,}$entry"
done

ext="$out/server.ext"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$ext"
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$out/server.key" -out "$out/server.csr" 2> /dev/null
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -sha256 -days "$days_server" \
  -extfile "$ext" -out "$out/server.crt" 2> /dev/null
rm -f "$out/server.csr" "$ext" "$out/ca.srl"
# The certificates are public; the keys stay readable by their owner only.
chmod 644 "$out/ca.crt" "$out/server.crt"
chmod 600 "$out/ca.key" "$out/server.key"
echo "make-tls-certs: $out/server.crt for $san, signed by $out/ca.crt (give ca.crt to the lamps)"

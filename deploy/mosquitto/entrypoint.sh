#!/bin/sh
# Container entrypoint of the compose broker (eclipse-mosquitto:2): writes the password file, the
# ACL and the TLS files that mosquitto.conf names, then starts the command (mosquitto) as the
# image would.
#
#   MQTT_USERNAME / MQTT_PASSWORD  our services' login (the same variables the subscriber and the
#                                  worker use); required, the broker allows no anonymous client.
#                                  MQTT_PASSWORD_FILE instead names a file holding the password.
#   MQTT_TLS_DIR                   ca.crt, server.crt and server.key for the TLS listener
#                                  (scripts/make-tls-certs.sh; compose: the secrets volume)
#   <config>/lamps.passwd          optional: lamps' logins, lines made by mosquitto_passwd
#
# MOSQUITTO_CONFIG_DIR and MOSQUITTO_RUN_DIR move the two folders (the tests run this script
# against a local mosquitto); the container uses the defaults.
set -eu

CONFIG_DIR="${MOSQUITTO_CONFIG_DIR:-/mosquitto/config}"
RUN_DIR="${MOSQUITTO_RUN_DIR:-/mosquitto/run}"

fail() {
  echo "mosquitto entrypoint: $*" >&2
  exit 1
}

if [ -z "${MQTT_PASSWORD:-}" ] && [ -n "${MQTT_PASSWORD_FILE:-}" ]; then
  [ -r "$MQTT_PASSWORD_FILE" ] || fail "MQTT_PASSWORD_FILE=$MQTT_PASSWORD_FILE cannot be read: fix the path (compose: secrets-init writes it)"
  MQTT_PASSWORD=$(cat "$MQTT_PASSWORD_FILE")
fi
[ -n "${MQTT_USERNAME:-}" ] || fail "MQTT_USERNAME is required: set it (and MQTT_PASSWORD) for the broker and our services, e.g. in .env"
[ -n "${MQTT_PASSWORD:-}" ] || fail "MQTT_PASSWORD is required: set it (and MQTT_USERNAME) for the broker and our services, e.g. in .env"
# The name goes into the ACL and the password file: no spaces, colons or wildcards.
printf '%s' "$MQTT_USERNAME" | grep -Eq '^[A-Za-z0-9_.-]+$' \
  || fail "MQTT_USERNAME may contain only letters, digits, '_', '.' and '-'"
case "$MQTT_PASSWORD" in
  *'
'*) fail "MQTT_PASSWORD must be a single line" ;;
esac

umask 077
mkdir -p "$RUN_DIR"

# Lamps first (without any line for our service user, so a lamp entry cannot replace it), then
# our user. The password goes to mosquitto_passwd on stdin (its prompt, answered twice), so it
# never appears on a command line. (`mosquitto_passwd -U` on a clear-text file would be simpler,
# but it cuts the password at a second ':'.)
passwd="$RUN_DIR/passwd"
tmp="$RUN_DIR/passwd.tmp"
: > "$tmp"
if [ -f "$CONFIG_DIR/lamps.passwd" ]; then
  grep -v -e "^${MQTT_USERNAME}:" -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$CONFIG_DIR/lamps.passwd" > "$tmp.lamps" || true
  # Lamps' lines must already be hashed: a clear-text line would be hashed below and work, but
  # it would also mean a clear-text password sits in the repository folder.
  if grep -v -q -E '^[^:]+:\$[67]\$' "$tmp.lamps"; then
    rm -f "$tmp" "$tmp.lamps"
    fail "$CONFIG_DIR/lamps.passwd has lines that are not hashed: create it with mosquitto_passwd"
  fi
  lamps=$(wc -l < "$tmp.lamps")
  cat "$tmp.lamps" > "$tmp"
  rm -f "$tmp.lamps"
else
  lamps=0
fi
: > "$tmp.user"
printf '%s\n%s\n' "$MQTT_PASSWORD" "$MQTT_PASSWORD" | mosquitto_passwd "$tmp.user" "$MQTT_USERNAME" > /dev/null
cat "$tmp.user" >> "$tmp"
rm -f "$tmp.user"
mv "$tmp" "$passwd"

sed "s/@MQTT_USERNAME@/${MQTT_USERNAME}/g" "$CONFIG_DIR/acl.template" > "$RUN_DIR/acl"

# Copied rather than read in place: the broker reads them as the mosquitto user, and the secrets
# volume is root's.
TLS_DIR="${MQTT_TLS_DIR:-/run/secrets/lampi/tls}"
for file in ca.crt server.crt server.key; do
  [ -r "$TLS_DIR/$file" ] || fail "$TLS_DIR/$file is missing: run scripts/make-tls-certs.sh $TLS_DIR <broker host name> (compose: secrets-init does)"
done
mkdir -p "$RUN_DIR/tls"
cp "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$RUN_DIR/tls/"

# Mosquitto drops to its own user after start: it must be able to read both files.
if [ "$(id -u)" = 0 ] && id mosquitto > /dev/null 2>&1; then
  chown -R mosquitto:mosquitto "$RUN_DIR"
fi
echo "mosquitto entrypoint: service user '$MQTT_USERNAME' and $lamps lamp(s) in $passwd; ACL in $RUN_DIR/acl" >&2

# The image's own entrypoint fixes the ownership of /mosquitto/data, then runs the command.
if [ -x /docker-entrypoint.sh ]; then
  exec /docker-entrypoint.sh "$@"
fi
exec "$@"

#!/bin/sh
# Runs the shipped broker configuration (mosquitto.conf, acl.template, entrypoint.sh, and
# lamps.passwd if there is one) on this host's own mosquitto, without Docker. Every line of
# mosquitto.conf is the shipped one except the container's folders, which become DIR, and the
# listener's port. Without this configuration Mosquitto keeps 1000 messages per client
# (max_queued_messages) and silently drops the rest while our subscriber is behind.
#
#   deploy/mosquitto/run-local.sh DIR [PORT [TLS_PORT]]     (defaults: 1883 and 8883)
#
# The TLS listener for lamps uses MQTT_TLS_DIR when it is set, else certificates that
# scripts/make-tls-certs.sh makes once in DIR/tls (for localhost; kept on later runs).
# Needs MQTT_USERNAME and MQTT_PASSWORD (our services' login, as for the compose broker). Starts
# mosquitto in the background, waits until it listens, prints its pid and returns; its log is
# DIR/mosquitto.log. DIR/data keeps retained messages and sessions across restarts.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 DIR [PORT]" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
PORT=${2:-1883}
TLS_PORT=${3:-8883}
LOG="$DIR/mosquitto.log"

mkdir -p "$DIR/config" "$DIR/data" "$DIR/run"
chmod 755 "$DIR" "$DIR/config"
cp "$HERE/acl.template" "$DIR/config/acl.template"
if [ -f "$HERE/lamps.passwd" ]; then cp "$HERE/lamps.passwd" "$DIR/config/lamps.passwd"; fi
for listener in 1883 8883; do
  grep -q "^listener $listener\$" "$HERE/mosquitto.conf" || { echo "$0: $HERE/mosquitto.conf has no 'listener $listener' line to move" >&2; exit 1; }
done
sed -e "s|/mosquitto/|$DIR/|g" -e "s|^listener 1883\$|listener $PORT|" -e "s|^listener 8883\$|listener $TLS_PORT|" \
  "$HERE/mosquitto.conf" > "$DIR/config/mosquitto.conf"
if [ -z "${MQTT_TLS_DIR:-}" ]; then
  MQTT_TLS_DIR="$DIR/tls"
  [ -f "$MQTT_TLS_DIR/server.crt" ] || sh "$HERE/../../scripts/make-tls-certs.sh" "$MQTT_TLS_DIR" localhost 127.0.0.1 > /dev/null
fi
export MQTT_TLS_DIR
# Started as root, mosquitto drops to its own user, which must be able to write its data.
if [ "$(id -u)" = 0 ] && id mosquitto > /dev/null 2>&1; then chown mosquitto:mosquitto "$DIR/data"; fi

MOSQUITTO_CONFIG_DIR="$DIR/config" MOSQUITTO_RUN_DIR="$DIR/run" \
  sh "$HERE/entrypoint.sh" mosquitto -c "$DIR/config/mosquitto.conf" > "$LOG" 2>&1 &
pid=$!
# Mosquitto logs each listening socket it opens; it exits at once when it cannot (port taken).
tries=0
until grep -q "listen socket on port $PORT" "$LOG" 2> /dev/null; do
  if ! kill -0 "$pid" 2> /dev/null || [ "$tries" -ge 100 ]; then
    echo "$0: mosquitto did not start on port $PORT (another broker there? \`sudo systemctl stop mosquitto\`, or another port; as root it reads $DIR as user mosquitto, so every folder above it must be readable by that user):" >&2
    cat "$LOG" >&2
    kill "$pid" 2> /dev/null || true
    exit 1
  fi
  tries=$((tries + 1))
  sleep 0.1
done
echo "mosquitto (pid $pid) listens on port $PORT with deploy/mosquitto/mosquitto.conf; log: $LOG; stop it with: kill $pid"

#!/usr/bin/env bash
# Claim day, 1 April 2020, replayed: the same crowd of virtual users sent (a) through anticamera,
# (b) straight at the demo portal, and optionally (c) through nginx with limit_req/limit_conn as
# an operator would configure it. Prints a Markdown table side by side.
#
#   loadtest/surge.sh                                   # C=20, 400 users within 2 s, 10 s runs
#   CAPACITY=50 USERS=2000 RAMP=5s DURATION=30s loadtest/surge.sh
#   FAULT_MODE=1 loadtest/surge.sh                      # the 2020 shared cache: count the leaks
#   COLUMNS_TO_RUN="proxy direct nginx" loadtest/surge.sh   # add nginx (installs nginx-light)
#
# Each column gets a fresh portal (and a fresh anticamera), so a collapsed portal (requests
# hanging 30 s) in one column cannot pollute the next. Reports: $OUT/surge-<column>.json.
# Keep runs short on a shared machine: DURATION <= 30s.
set -euo pipefail
cd "$(dirname "$0")/.."

CAPACITY=${CAPACITY:-20}               # portal capacity C (requests in flight at nominal latency)
USERS=${USERS:-400}                    # virtual users
RAMP=${RAMP:-2s}                       # all users arrive within this (20x C in a few seconds)
DURATION=${DURATION:-10s}              # hard limit of each run
MAX_WAIT=${MAX_WAIT:-60s}              # a user gives up after waiting this long in the queue
FAULT_MODE=${FAULT_MODE:-0}            # 1 = the portal's 2020 cross-user cache under load
BASE_LATENCY=${BASE_LATENCY:-20ms}     # portal latency at or under capacity
COLUMNS_TO_RUN=${COLUMNS_TO_RUN:-"proxy direct"}
THINK=${THINK:-0ms}                    # pause between the steps of a journey
# Paths behind anticamera's waiting room. The home page and the login stay open by default;
# GATE_PREFIXES="/login /account /claim /api/" puts the login behind the gate too.
GATE_PREFIXES=${GATE_PREFIXES:-"/account /claim /api/"}
# The gate admits users, not requests: an admitted user has at most one request in flight (one
# browser tab, HTTP/1.1), so G users put at most G requests on the portal. The open pages (/ and
# /login) are not gated and take the rest: leave them a quarter of C.
GATE_CAPACITY=${GATE_CAPACITY:-$(( CAPACITY * 2 ))}
GUARD_MODE=${GUARD_MODE:-fixed}
# The portal concurrency limit anticamera enforces. Above CAPACITY the portal degrades (and, in
# fault mode, leaks): the canary storm sets it higher on purpose to exercise the leak guard.
GUARD_LIMIT=${GUARD_LIMIT:-$CAPACITY}
# nginx: what an operator would derive from the portal's capacity (C requests of ~20 ms each =
# 50*C req/s at best; allow half of that steadily, a burst of 2*C, C connections at once).
NGINX_RATE=${NGINX_RATE:-$(( CAPACITY * 25 ))}
NGINX_BURST=${NGINX_BURST:-$(( CAPACITY * 2 ))}
OUT=${OUT:-$(mktemp -d)}

PORTAL_PORT=${PORTAL_PORT:-19000}
AC_PORT=${AC_PORT:-19080}
AC_ADMIN=${AC_ADMIN:-19081}
NGINX_PORT=${NGINX_PORT:-19082}
PORTAL=http://127.0.0.1:$PORTAL_PORT

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin anticamera --bin surge
BIN=$CARGO_TARGET_DIR/release

work=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/logs" "$OUT"

wait_port() { # port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on 127.0.0.1:$1; logs in $work/logs:" >&2
  tail -n 20 "$work"/logs/* >&2 || true
  return 1
}

start_portal() {
  local fault=()
  [[ $FAULT_MODE == 1 ]] && fault=(--fault-mode)
  "$BIN/anticamera" demo-portal --listen "127.0.0.1:$PORTAL_PORT" --capacity "$CAPACITY" \
    --base-latency "$BASE_LATENCY" --threads 1 "${fault[@]}" >"$work/logs/portal.log" 2>&1 &
  pids+=($!)
  wait_port "$PORTAL_PORT"
}

surge() { # column target
  "$BIN/surge" --mode "$1" --target "$2" --portal "$PORTAL" --capacity "$CAPACITY" \
    --users "$USERS" --ramp "$RAMP" --duration "$DURATION" --max-wait "$MAX_WAIT" \
    --think "$THINK" --json-out "$OUT/surge-$1.json"
  echo
}

# (a) Through anticamera: a waiting room on the personal pages and the claim.
run_proxy() {
  local prefixes
  prefixes=$(printf '"%s", ' $GATE_PREFIXES)
  cat >"$work/anticamera.toml" <<CONF
[server]
listen = "127.0.0.1:$AC_PORT"
workers = 2

[upstream]
urls = ["$PORTAL"]
connect_timeout = "1s"
response_timeout = "10s"

[admin]
listen = "127.0.0.1:$AC_ADMIN"

[log]
level = "warn"

[waiting_room]
# A test key: anticamera run refuses the demo's NOT-A-SECRET keys.
keys = [{ id = 1, secret = "surge-test-key-0123456789abcdef0123456789" }]
poll_interval = "1s"
tick = "100ms"

[[gates]]
name = "services"
label = "Domanda bonus 600 euro"
prefix = [${prefixes%, }]
capacity = $GATE_CAPACITY
session_duration = "2m"

# The portal never sees more than its capacity: everything else waits briefly for a slot
# (users inside first) or is shed with 503 + Retry-After.
[upstream_guard]
mode = "$GUARD_MODE"
max_in_flight = $GUARD_LIMIT
min_limit = $(( GUARD_LIMIT / 4 > 0 ? GUARD_LIMIT / 4 : 1 ))
max_limit = $GUARD_LIMIT
queue_size = $(( CAPACITY * 20 ))
queue_timeout = "5s"
reserve_for_inside = 0.3
latency_threshold = "$(( ${BASE_LATENCY%ms} * 4 ))ms"

[isolation]
session_cookies = ["portal_session"]
leak_guard_header = "x-portal-user"

[microcache]
enabled = true
CONF
  "$BIN/anticamera" check-config "$work/anticamera.toml" >/dev/null
  start_portal
  "$BIN/anticamera" run --config "$work/anticamera.toml" >"$work/logs/anticamera.log" 2>&1 &
  pids+=($!)
  wait_port "$AC_PORT"
  echo "## through anticamera (gate on $GATE_PREFIXES: $GATE_CAPACITY users; portal capacity $CAPACITY)"
  surge proxy "http://127.0.0.1:$AC_PORT"
  stop_all
}

# (b) Straight at the portal: 1 April 2020.
run_direct() {
  start_portal
  echo "## straight at the portal (capacity $CAPACITY)"
  surge direct "$PORTAL"
  stop_all
}

# ---- (c) THIRD COLUMN: nginx in front of the portal ------------------------------------------
# What an operator without a waiting room would do: cap connections per server at C and the
# request rate with a burst; everything beyond gets 503 (limit_req_status / limit_conn_status).
# Needs nginx (./scripts/setup-test-deps nginx-light). Tune with NGINX_RATE / NGINX_BURST.
run_nginx() {
  ./scripts/setup-test-deps nginx-light
  local nginx
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  mkdir -p "$work/nginx-tmp"
  cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/logs/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp/body;
  proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-tmp/uwsgi;
  scgi_temp_path $work/nginx-tmp/scgi;
  keepalive_requests 1000000;
  limit_conn_zone \$server_name zone=perserver:1m;
  limit_req_zone \$server_name zone=portal:1m rate=${NGINX_RATE}r/s;
  limit_conn_status 503;
  limit_req_status 503;
  upstream portal { server 127.0.0.1:$PORTAL_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    # The limit keys must not be empty (an empty key is not limited): name the server.
    server_name portal.surge;
    location / {
      limit_conn perserver $CAPACITY;
      limit_req zone=portal burst=$NGINX_BURST;
      proxy_pass http://portal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_read_timeout 10s;
    }
  }
}
CONF
  start_portal
  "$nginx" -c "$work/nginx.conf" -e "$work/logs/nginx.err" >"$work/logs/nginx.log" 2>&1 &
  pids+=($!)
  wait_port "$NGINX_PORT"
  echo "## through nginx (limit_conn $CAPACITY, limit_req ${NGINX_RATE}r/s burst $NGINX_BURST)"
  surge nginx "http://127.0.0.1:$NGINX_PORT"
  stop_all
}
# ------------------------------------------------------------------------------------------------

reports=()
for col in $COLUMNS_TO_RUN; do
  case $col in
    proxy) run_proxy ;;
    direct) run_direct ;;
    nginx) run_nginx ;;
    *) echo "unknown column $col (proxy, direct, nginx)" >&2; exit 2 ;;
  esac
  reports+=("$OUT/surge-$col.json")
done

echo "## Claim-day surge: $USERS users within $RAMP on a portal of capacity $CAPACITY$([[ $FAULT_MODE == 1 ]] && echo ' (fault mode)'), runs cut at $DURATION"
echo
"$BIN/surge" --table "${reports[@]}"
echo
echo "JSON reports: $OUT"

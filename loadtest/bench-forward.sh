#!/usr/bin/env bash
# anticamera vs nginx on the plain forwarding path: same upstream, same load generator, same
# machine, same run. Prints a Markdown table for BENCHMARKS.md.
#
#   loadtest/bench-forward.sh            # 3 rounds of 10 s per proxy, wrk -t1 -c64
#   ROUNDS=5 DURATION=20s CONNS=128 THREADS=2 loadtest/bench-forward.sh
#   (WORKERS sets both proxies' workers; AC_WORKERS overrides anticamera's alone)
#   BASELINE_BIN=/path/to/older/anticamera loadtest/bench-forward.sh
#   (also runs that build beside the current one, same config and rounds: rows "…@base", for a
#   before/after in the same run)
#   STORE=both loadtest/bench-forward.sh     # adds the waiting room on Redis against in memory
#   STORE=only loadtest/bench-forward.sh     # those rows alone (no forwarding, nginx, TLS rows)
#   PROFILE=/tmp/prof loadtest/bench-forward.sh  # also a perf profile of each proxy (see below)
#
# STORE=both|only (issue 15: "the queue page and status poll through a node in Redis mode keep
# >= 90% of the in-memory requests/s"): two more anticamera processes with the same config, one
# with the memory store and one with `[store] kind = "redis"` on a redis-server of the script's
# own (free loopback port, no persistence; scripts/setup-redis installs it). Each has a gate
# `w` (prefix /w) of capacity 1, held by someone let in first, and 40 people who then took a
# number. In each round, alternately on each store:
#   wr-queue       GET /w with the last of them's ticket cookie (a waiting person's reload,
#                  far from the front: no round trip to Redis by design)       <- issue 15
#   wr-status      GET /.anticamera/status?gate=w with that ticket (JSON poll, no long poll)
#                                                                              <- issue 15
#   wr-queue-front GET /w with the first one's ticket (at the front: in Redis mode each page
#                  request checks the store once, `Gate::status_checked`)
#   wr-arrival     GET /w without a cookie: a new arrival each time (takes a number: one round
#                  trip in Redis mode; at most 8 in flight per node, past that the fail mode
#                  answers at once, counted in the notes as `busy`)
# and prints redis / memory for requests/s and CPU per request. The CPU column is anticamera's
# own; redis-server's per request is in the notes (`redis-cpu`), with the store round trips per
# request (`rt/req`, background included: ~60/s per node).
#
# The upstream is nginx serving a 2 KiB file (so the upstream is never the bottleneck); both
# proxies keep pooled keep-alive connections to it and run 2 workers. Everything shares the
# machine's cores, as it would on a small VM; compare ratios, not absolute numbers.
#
# TLS rows (nginx-tls, anticamera-tls): both proxies also terminate TLS (a throwaway P-256
# self-signed certificate made here with openssl, TLS 1.3 as wrk's OpenSSL negotiates it) and
# forward to the same plain upstream; wrk over https on keep-alive connections, so the rows
# measure encryption per request, with each connection's one handshake amortised.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-2}
UP_PORT=18081 NGINX_PORT=18082 AC_PORT=18083 AC_ADMIN=18084 BASE_PORT=18085 BASE_ADMIN=18086
NGINX_TLS_PORT=18087 AC_TLS_PORT=18088 AC_TLS_ADMIN=18089
WR_MEM_PORT=18090 WR_MEM_ADMIN=18091 WR_REDIS_PORT=18092 WR_REDIS_ADMIN=18093
BASELINE_BIN=${BASELINE_BIN:-}
STORE=${STORE:-memory}
case $STORE in
  memory | both | only) ;;
  *) echo "STORE: memory (default), both or only, not $STORE" >&2; exit 2 ;;
esac
# Forwarding rows (anticamera, nginx, TLS, the paused gate's pages): all but STORE=only.
FORWARD=1
[[ $STORE == only ]] && FORWARD=0

./scripts/setup-test-deps nginx-light wrk
[[ $STORE == memory ]] || ./scripts/setup-redis
cargo build --release --quiet -p anticamera
BIN=${CARGO_TARGET_DIR:-target}/release/anticamera

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT

chmod 755 "$work"
mkdir -p "$work/www" "$work/logs"
head -c 2048 /dev/zero | tr '\0' 'a' > "$work/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null

cat > "$work/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log $work/logs/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; root $work/www; location / { try_files /index.html =404; } }
}
CONF

# nginx as an operator would run it as a reverse proxy: pooled upstream keep-alive, the same
# forwarding headers anticamera sets, no buffering to disk.
cat > "$work/proxy.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $work/proxy.pid;
error_log $work/logs/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream portal { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport;
    location / {
      proxy_pass http://portal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl reuseport;
    ssl_certificate $work/tls.pem;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://portal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
}
CONF

cat > "$work/anticamera.toml" <<CONF
[server]
listen = "127.0.0.1:$AC_PORT"
workers = ${AC_WORKERS:-$WORKERS}
[upstream]
urls = ["http://127.0.0.1:$UP_PORT"]
[admin]
listen = "127.0.0.1:$AC_ADMIN"
[log]
level = "warn"
# A paused gate: every request to /queue gets the waiting-room page (and a new ticket); the
# status poll answers from the ticket. Neither touches the upstream.
[waiting_room]
keys = [{ id = 1, secret = "bench-key-0123456789abcdef0123456789abcdef" }]
[[gates]]
name = "q"
prefix = ["/queue"]
mode = "paused"
CONF

# The same anticamera, terminating TLS itself (its own process, so its CPU is its own).
sed -e "s/127.0.0.1:$AC_PORT/127.0.0.1:$AC_TLS_PORT/" -e "s/127.0.0.1:$AC_ADMIN/127.0.0.1:$AC_TLS_ADMIN/" \
  "$work/anticamera.toml" > "$work/anticamera-tls.toml"
cat >> "$work/anticamera-tls.toml" <<CONF
[server.tls]
cert_file = "$work/tls.pem"
key_file = "$work/tls.key"
CONF

if [[ -n $BASELINE_BIN ]]; then
  sed -e "s/127.0.0.1:$AC_PORT/127.0.0.1:$BASE_PORT/" -e "s/127.0.0.1:$AC_ADMIN/127.0.0.1:$BASE_ADMIN/" \
    "$work/anticamera.toml" > "$work/baseline.toml"
fi

if [[ $STORE != memory ]]; then
  # A port nobody answers on now (redis-server refuses to start if one takes it meanwhile).
  free_port() {
    local p
    for _ in $(seq 100); do
      p=$((20000 + RANDOM % 40000))
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo "no free port" >&2; return 1
  }
  REDIS_PORT=$(free_port)
  mkdir -p "$work/redis"
  # The waiting room's pages on a gate that is full: capacity 1, held by the first person; the
  # rest take numbers and wait. Same file for both stores but the [store] section.
  wr_conf() { # port admin
    cat <<CONF
[server]
listen = "127.0.0.1:$1"
workers = ${AC_WORKERS:-$WORKERS}
[upstream]
urls = ["http://127.0.0.1:$UP_PORT"]
[admin]
listen = "127.0.0.1:$2"
[log]
level = "warn"
[waiting_room]
keys = [{ id = 1, secret = "bench-key-0123456789abcdef0123456789abcdef" }]
[[gates]]
name = "w"
prefix = ["/w"]
capacity = 1
session_duration = "2h"
CONF
  }
  wr_conf "$WR_MEM_PORT" "$WR_MEM_ADMIN" > "$work/wr-memory.toml"
  { wr_conf "$WR_REDIS_PORT" "$WR_REDIS_ADMIN"; cat <<CONF
[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT"
prefix = "bench-forward:"
node_id = "bench"
CONF
  } > "$work/wr-redis.toml"
fi

nginx -c "$work/upstream.conf" -p "$work" & up_pid=$!; pids+=($up_pid)
nginx -c "$work/proxy.conf" -p "$work" & ng_pid=$!; pids+=($ng_pid)
"$BIN" run --config "$work/anticamera.toml" & ac_pid=$!; pids+=($ac_pid)
"$BIN" run --config "$work/anticamera-tls.toml" & ac_tls_pid=$!; pids+=($ac_tls_pid)
if [[ -n $BASELINE_BIN ]]; then
  "$BASELINE_BIN" run --config "$work/baseline.toml" & base_pid=$!; pids+=($base_pid)
fi
if [[ $STORE != memory ]]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --save "" --appendonly no \
    --daemonize no --loglevel warning > "$work/logs/redis.log" 2>&1 & redis_pid=$!; pids+=($redis_pid)
  for _ in $(seq 100); do
    [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    sleep 0.05
  done
  # Ours, not another server that took the port first.
  redis-cli -p "$REDIS_PORT" config get dir | grep -qx "$work/redis" \
    || { echo "redis-server did not start on port $REDIS_PORT: $(tail -3 "$work/logs/redis.log")" >&2; exit 1; }
  "$BIN" run --config "$work/wr-memory.toml" > "$work/logs/wr-memory.log" 2>&1 & wr_mem_pid=$!; pids+=($wr_mem_pid)
  "$BIN" run --config "$work/wr-redis.toml" > "$work/logs/wr-redis.log" 2>&1 & wr_redis_pid=$!; pids+=($wr_redis_pid)
fi
sleep 1
curl -fsS "http://127.0.0.1:$NGINX_PORT/" >/dev/null
curl -fsS "http://127.0.0.1:$AC_PORT/" >/dev/null
curl -fsS --cacert "$work/tls.pem" "https://localhost:$NGINX_TLS_PORT/" >/dev/null
curl -fsS --cacert "$work/tls.pem" "https://localhost:$AC_TLS_PORT/" >/dev/null
if [[ $STORE != memory ]]; then
  # The Redis node admits only once it holds the leader lease.
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$WR_REDIS_ADMIN/metrics" 2>/dev/null | grep -q '^anticamera_store_leader 1' && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$WR_REDIS_ADMIN/metrics" | grep -q '^anticamera_store_leader 1' \
    || { echo "the Redis-mode anticamera is not the leader after 10 s: $(tail -5 "$work/logs/wr-redis.log")" >&2; exit 1; }
fi
up_pids="$up_pid $(pgrep -P "$up_pid" | tr '\n' ' ')"
ng_pids="$ng_pid $(pgrep -P "$ng_pid" | tr '\n' ' ')"

# wrk's --latency output: "Requests/sec: N" and the 99% line of the distribution. The waiting
# room's pages answer 503 by design: wrk reports them as non-2xx in the notes column.
# CPU time (user + system, clock ticks) of a set of processes: the proxy's own cost per request,
# which the shared cores blur in req/s but not here.
# proc_ticks AWK-EXPR PID...: that expression of /proc/PID/stat's fields, summed (14 is user
# time, 15 system time).
proc_ticks() { local e=$1 t=0 p; shift; for p in "$@"; do t=$((t + $(awk "{print $e}" /proc/$p/stat))); done; echo $t; }
cpu_ticks() { proc_ticks '$14 + $15' "$@"; }
user_ticks() { proc_ticks '$14' "$@"; }
# per_request TICKS REQUESTS: microseconds of CPU per request.
per_request() { awk -v c="$1" -v r="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", c * 1e6 / hz / r }'; }
# Sum of a metric family on an admin listener (0 if absent).
metric_sum() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d", s }'; }
run_wrk() { # name port pids [path [wrk options...]]   (SCHEME=https for the TLS rows)
  # STORE_ADMIN=port: note that node's store round trips per request and calls refused busy;
  # EXTRA_PIDS: note those processes' CPU per request (redis-server's).
  local name=$1 port=$2 pids=$3 path=${4:-/} scheme=${SCHEME:-http}
  shift $(( $# < 4 ? $# : 4 ))
  local out rps p99 errs reqs c0 c1 u0 u1 us usr sys e0 e1 rt0 rt1 b0 b1 extra=""
  if [[ -n ${STORE_ADMIN:-} ]]; then
    rt0=$(metric_sum "$STORE_ADMIN" anticamera_store_round_trips_total)
    b0=$(metric_sum "$STORE_ADMIN" anticamera_store_busy_total)
  fi
  [[ -n ${EXTRA_PIDS:-} ]] && e0=$(cpu_ticks $EXTRA_PIDS)
  c0=$(cpu_ticks $pids)
  u0=$(user_ticks $pids)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$scheme://127.0.0.1:$port$path")
  c1=$(cpu_ticks $pids)
  u1=$(user_ticks $pids)
  [[ -n ${EXTRA_PIDS:-} ]] && e1=$(cpu_ticks $EXTRA_PIDS)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  us=$(per_request $((c1 - c0)) "$reqs")
  usr=$(per_request $((u1 - u0)) "$reqs")
  sys=$(per_request $((c1 - c0 - (u1 - u0))) "$reqs")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  if [[ -n ${STORE_ADMIN:-} ]]; then
    rt1=$(metric_sum "$STORE_ADMIN" anticamera_store_round_trips_total)
    b1=$(metric_sum "$STORE_ADMIN" anticamera_store_busy_total)
    extra+=$(awk -v d=$((rt1 - rt0)) -v r="$reqs" -v b=$((b1 - b0)) 'BEGIN { printf " rt/req=%.4f busy=%d", d / r, b }')
  fi
  if [[ -n ${EXTRA_PIDS:-} ]]; then
    extra+=$(awk -v c=$((e1 - e0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf " redis-cpu=%.1fus", c * 1e6 / hz / r }')
  fi
  echo "$name $rps $p99 $us $usr $sys ${errs:-}${extra}" >> "$work/results"
}

to_ms() { # wrk latency like 1.23ms / 850.00us / 1.10s
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v }'
}

if ((FORWARD)); then
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null   # warm-up
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$AC_PORT/" >/dev/null
  wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$NGINX_TLS_PORT/" >/dev/null
  wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$AC_TLS_PORT/" >/dev/null
fi
take_ticket() { # port [path]
  curl -s -o /dev/null -D - -A bench-forward "http://127.0.0.1:$1${2:-/queue}" | awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}'
}
ticket=$(take_ticket "$AC_PORT")
[[ -n $ticket ]] || { echo "no ticket from the queue page" >&2; exit 1; }
names=""
((FORWARD)) && names="upstream-direct nginx anticamera nginx-tls anticamera-tls queue-page status-poll"
if [[ $STORE != memory ]]; then
  # Per store: the first person in holds the gate's one place; 40 more take numbers. The first
  # of them waits at the front, the last one 40 places back (beyond the 2 x capacity + 16 near
  # the front that a page request re-checks in Redis mode).
  fill_gate() { # port -> "front far" ticket cookies
    local code front="" far="" c
    # A fresh Redis gives nobody a place for its resync grace (>= 500 ms): try for 3 s.
    for _ in $(seq 30); do
      code=$(curl -s -o /dev/null -w '%{http_code}' -A bench-forward -b "$work/first-$1.jar" -c "$work/first-$1.jar" "http://127.0.0.1:$1/w")
      [[ $code == 200 ]] && break
      sleep 0.1
    done
    [[ $code == 200 ]] || { echo "the gate's first person was not let in on :$1 ($code)" >&2; return 1; }
    for _ in $(seq 40); do
      c=$(take_ticket "$1" /w)
      [[ -n $c ]] || { echo "no ticket from the full gate on :$1" >&2; return 1; }
      [[ -z $front ]] && front=$c
      far=$c
    done
    # Both really wait (a ticket, a position) before anything is measured.
    for c in "$front" "$far"; do
      curl -s -A bench-forward -H "Cookie: $c" "http://127.0.0.1:$1/.anticamera/status?gate=w" | grep -q '"state":"waiting"' \
        || { echo "a ticket of :$1 is not waiting: $(curl -s -A bench-forward -H "Cookie: $c" "http://127.0.0.1:$1/.anticamera/status?gate=w")" >&2; return 1; }
    done
    echo "$front $far"
  }
  read -r mem_front mem_far <<<"$(fill_gate "$WR_MEM_PORT")"
  read -r red_front red_far <<<"$(fill_gate "$WR_REDIS_PORT")"
  [[ -n $mem_far && -n $red_far ]] || exit 1
  wrk -t1 -c"$CONNS" -d2s -H "User-Agent: bench-forward" -H "Cookie: $mem_far" "http://127.0.0.1:$WR_MEM_PORT/w" >/dev/null
  wrk -t1 -c"$CONNS" -d2s -H "User-Agent: bench-forward" -H "Cookie: $red_far" "http://127.0.0.1:$WR_REDIS_PORT/w" >/dev/null
  for r in wr-queue wr-status wr-queue-front wr-arrival; do names="$names $r@memory $r@redis"; done
fi
if [[ -n $BASELINE_BIN ]]; then
  curl -fsS "http://127.0.0.1:$BASE_PORT/" >/dev/null
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$BASE_PORT/" >/dev/null
  base_ticket=$(take_ticket "$BASE_PORT")
  [[ -n $base_ticket ]] || { echo "no ticket from the baseline's queue page" >&2; exit 1; }
  names="$names anticamera@base queue-page@base status-poll@base"
fi
wr_rows() { # store port pid ticket-far ticket-front  (STORE_ADMIN / EXTRA_PIDS set by the caller)
  local ua="User-Agent: bench-forward"
  run_wrk "wr-queue@$1" "$2" "$3" /w -H "$ua" -H "Cookie: $4"
  run_wrk "wr-status@$1" "$2" "$3" "/.anticamera/status?gate=w" -H "$ua" -H "Cookie: $4" -H "Accept: application/json"
  run_wrk "wr-queue-front@$1" "$2" "$3" /w -H "$ua" -H "Cookie: $5"
  run_wrk "wr-arrival@$1" "$2" "$3" /w -H "$ua"
}
for r in $(seq "$ROUNDS"); do
  if [[ $STORE != memory ]]; then
    # Alternate which store goes first, round by round.
    if ((r % 2)); then
      wr_rows memory "$WR_MEM_PORT" "$wr_mem_pid" "$mem_far" "$mem_front"
      STORE_ADMIN=$WR_REDIS_ADMIN EXTRA_PIDS=$redis_pid wr_rows redis "$WR_REDIS_PORT" "$wr_redis_pid" "$red_far" "$red_front"
    else
      STORE_ADMIN=$WR_REDIS_ADMIN EXTRA_PIDS=$redis_pid wr_rows redis "$WR_REDIS_PORT" "$wr_redis_pid" "$red_far" "$red_front"
      wr_rows memory "$WR_MEM_PORT" "$wr_mem_pid" "$mem_far" "$mem_front"
    fi
  fi
  ((FORWARD)) || continue
  run_wrk upstream-direct "$UP_PORT" "$up_pids"
  run_wrk nginx "$NGINX_PORT" "$ng_pids"
  run_wrk anticamera "$AC_PORT" "$ac_pid"
  SCHEME=https run_wrk nginx-tls "$NGINX_TLS_PORT" "$ng_pids"
  SCHEME=https run_wrk anticamera-tls "$AC_TLS_PORT" "$ac_tls_pid"
  run_wrk queue-page "$AC_PORT" "$ac_pid" /queue
  run_wrk status-poll "$AC_PORT" "$ac_pid" "/.anticamera/status?gate=q" -H "Cookie: $ticket" -H "Accept: application/json"
  if [[ -n $BASELINE_BIN ]]; then
    run_wrk anticamera@base "$BASE_PORT" "$base_pid"
    run_wrk queue-page@base "$BASE_PORT" "$base_pid" /queue
    run_wrk status-poll@base "$BASE_PORT" "$base_pid" "/.anticamera/status?gate=q" -H "Cookie: $base_ticket" -H "Accept: application/json"
  fi
done

# PROFILE=dir: after the rounds, one more wrk run of DURATION against each proxy under
# `perf record` (flat, every CPU sample of its processes, user and kernel), and per proxy
# `dir/<proxy>.dso.txt` (share by binary / library / kernel) and `dir/<proxy>.sym.txt` (share by
# symbol), to turn CPU per request into where each microsecond goes (BENCHMARKS §1).
if ((FORWARD)) && [[ -n ${PROFILE:-} ]]; then
  mkdir -p "$PROFILE"
  for target in nginx anticamera; do
    if [[ $target == nginx ]]; then port=$NGINX_PORT ppids=$ng_pids; else port=$AC_PORT ppids=$ac_pid; fi
    ppids=$(echo $ppids | tr ' ' ',')
    perf record -q -F 4999 -o "$PROFILE/$target.data" -p "$ppids" -- sleep "${DURATION%s}" 2>/dev/null &
    rec=$!
    c0=$(cpu_ticks ${ppids//,/ }); u0=$(user_ticks ${ppids//,/ })
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/" > "$PROFILE/$target.wrk"
    c1=$(cpu_ticks ${ppids//,/ }); u1=$(user_ticks ${ppids//,/ })
    wait "$rec" || true
    reqs=$(awk '/requests in/ {print $1}' "$PROFILE/$target.wrk")
    echo "cpu_us_per_request $(per_request $((c1 - c0)) "$reqs") user $(per_request $((u1 - u0)) "$reqs")" \
      "system $(per_request $((c1 - c0 - (u1 - u0))) "$reqs") requests $reqs" > "$PROFILE/$target.cpu"
    perf report -i "$PROFILE/$target.data" --stdio --sort dso 2>/dev/null | awk '!/^#/ && NF' > "$PROFILE/$target.dso.txt" || true
    perf report -i "$PROFILE/$target.data" --stdio --sort dso,sym 2>/dev/null | awk '!/^#/ && NF' > "$PROFILE/$target.sym.txt" || true
  done
  echo "profiles in $PROFILE (perf data, .cpu, .dso.txt, .sym.txt); where each µs goes:" > "$PROFILE/summary.md"
  python3 loadtest/profile-breakdown.py "$PROFILE/nginx" "$PROFILE/anticamera" >> "$PROFILE/summary.md" || true
fi

ac_hwm=$(awk '/VmHWM/ {print $2}' /proc/$ac_pid/status)
nginx_hwm=0
for p in $(pgrep -f "nginx: worker process" ); do
  if grep -q "$work/proxy.conf" /proc/$(awk '{print $4}' /proc/$p/stat)/cmdline 2>/dev/null; then
    nginx_hwm=$((nginx_hwm + $(awk '/VmHWM/ {print $2}' /proc/$p/status)))
  fi
done

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, $WORKERS proxy workers, $(nproc) cores, $(date -u +%F)"
echo
echo "| target | req/s (median) | p99 ms (median) | CPU µs/request (median) | user / system µs (medians) | notes |"
echo "|---|---|---|---|---|---|"
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
results_column() { awk -v n="$1" -v c="$2" '$1==n {print $c}' "$work/results"; } # name column-number
for name in $names; do
  rps=$(results_column "$name" 2 | median)
  p99=$(results_column "$name" 3 | while read -r v; do to_ms "$v"; done | median)
  cpu=$(results_column "$name" 4 | median)
  usr=$(results_column "$name" 5 | median)
  sys=$(results_column "$name" 6 | median)
  notes=$(awk -v n="$name" '$1==n && NF>6 {$1=$2=$3=$4=$5=$6=""; print}' "$work/results" | head -1)
  echo "| $name | $rps | $p99 | $cpu | $usr / $sys | ${notes:-} |"
  var=${name//-/_}; var=${var//@/_}
  eval "rps_$var=$rps; p99_$var=$p99; cpu_$var=$cpu; usr_$var=$usr; sys_$var=$sys"
done
echo
if [[ $STORE != memory ]]; then
  echo "waiting room, Redis store / memory store (same run, medians; issue 15: queue page and status poll >= 0.90x req/s):"
  for r in wr-queue wr-status wr-queue-front wr-arrival; do
    v=${r//-/_}
    eval "rm=\$rps_${v}_memory rr=\$rps_${v}_redis cm=\$cpu_${v}_memory cr=\$cpu_${v}_redis"
    awk -v n="$r" -v rm="$rm" -v rr="$rr" -v cm="$cm" -v cr="$cr" \
      'BEGIN { printf "  %-15s req/s %.2fx (%s / %s), anticamera CPU per request %.2fx (%s / %s us)\n", n, rr/rm, rr, rm, cr/cm, cr, cm }'
  done
fi
if ((FORWARD)); then
awk -v a="$rps_anticamera" -v n="$rps_nginx" -v pa="$p99_anticamera" -v pn="$p99_nginx" \
  'BEGIN { printf "anticamera / nginx: throughput %.2fx, p99 %.2fx (lower is better)\n", a/n, pa/pn }'
awk -v a="$cpu_anticamera" -v n="$cpu_nginx" -v au="$usr_anticamera" -v nu="$usr_nginx" \
  -v as="$sys_anticamera" -v ns="$sys_nginx" \
  'BEGIN { printf "anticamera / nginx: proxy CPU per forwarded request %.2fx (lower is better): user %.2fx (%s / %s µs), system %.2fx (%s / %s µs)\n", a/n, au/nu, au, nu, as/ns, as, ns }'
awk -v a="$rps_anticamera_tls" -v n="$rps_nginx_tls" -v ca="$cpu_anticamera_tls" -v cn="$cpu_nginx_tls" \
  -v pa="$p99_anticamera_tls" -v pn="$p99_nginx_tls" \
  'BEGIN { printf "over TLS, anticamera / nginx: throughput %.2fx, p99 %.2fx, CPU per request %.2fx\n", a/n, pa/pn, ca/cn }'
awk -v a="$cpu_anticamera" -v t="$cpu_anticamera_tls" -v n="$cpu_nginx" -v nt="$cpu_nginx_tls" \
  'BEGIN { printf "cost of TLS per request (CPU µs): anticamera +%.1f, nginx +%.1f\n", t-a, nt-n }'
awk -v q="$rps_queue_page" -v s="$rps_status_poll" -v n="$rps_nginx" \
  'BEGIN { printf "waiting room vs nginx proxying: queue page %.2fx, JSON status poll %.2fx\n", q/n, s/n }'
if [[ -n $BASELINE_BIN ]]; then
  awk -v a="$cpu_anticamera" -v b="$cpu_anticamera_base" -v q="$rps_queue_page" -v qb="$rps_queue_page_base" \
    -v s="$rps_status_poll" -v sb="$rps_status_poll_base" \
    'BEGIN { printf "this build / baseline: CPU per forwarded request %.2fx, queue page req/s %.2fx, status poll req/s %.2fx\n", a/b, q/qb, s/sb }'
  echo "peak RSS: baseline $(awk '/VmHWM/ {print $2}' /proc/$base_pid/status) KiB"
fi
echo "peak RSS: anticamera ${ac_hwm} KiB, nginx proxy workers ${nginx_hwm} KiB (sum)"
fi
[[ -n ${PROFILE:-} ]] && ((FORWARD)) && { echo; cat "$PROFILE/summary.md"; }
echo
echo "raw rounds:"; cat "$work/results"

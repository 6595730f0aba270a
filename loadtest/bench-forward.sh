#!/usr/bin/env bash
# anticamera vs nginx on the plain forwarding path: same upstream, same load generator, same
# machine, same run. Prints a Markdown table for BENCHMARKS.md.
#
#   loadtest/bench-forward.sh            # 3 rounds of 10 s per proxy, wrk -t1 -c64
#   ROUNDS=5 DURATION=20s CONNS=128 THREADS=2 loadtest/bench-forward.sh
#   (WORKERS sets both proxies' workers; AC_WORKERS overrides anticamera's alone)
#
# The upstream is nginx serving a 2 KiB file (so the upstream is never the bottleneck); both
# proxies keep pooled keep-alive connections to it and run 2 workers. Everything shares the
# machine's cores, as it would on a small VM; compare ratios, not absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-2}
UP_PORT=18081 NGINX_PORT=18082 AC_PORT=18083 AC_ADMIN=18084

./scripts/setup-test-deps nginx-light wrk
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/anticamera

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT

chmod 755 "$work"
mkdir -p "$work/www" "$work/logs"
head -c 2048 /dev/zero | tr '\0' 'a' > "$work/www/index.html"

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

nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)
"$BIN" run --config "$work/anticamera.toml" & ac_pid=$!; pids+=($ac_pid)
sleep 1
curl -fsS "http://127.0.0.1:$NGINX_PORT/" >/dev/null
curl -fsS "http://127.0.0.1:$AC_PORT/" >/dev/null

# wrk's --latency output: "Requests/sec: N" and the 99% line of the distribution. The waiting
# room's pages answer 503 by design: wrk reports them as non-2xx in the notes column.
run_wrk() { # name port [path [wrk options...]]
  local name=$1 port=$2 path=${3:-/}
  shift $(( $# < 3 ? $# : 3 ))
  local out rps p99 errs
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "http://127.0.0.1:$port$path")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$name $rps $p99 ${errs:-}" >> "$work/results"
}

to_ms() { # wrk latency like 1.23ms / 850.00us / 1.10s
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v }'
}

wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null   # warm-up
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$AC_PORT/" >/dev/null
ticket=$(curl -s -o /dev/null -D - "http://127.0.0.1:$AC_PORT/queue" | awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}')
[[ -n $ticket ]] || { echo "no ticket from the queue page" >&2; exit 1; }
for r in $(seq "$ROUNDS"); do
  run_wrk upstream-direct "$UP_PORT"
  run_wrk nginx "$NGINX_PORT"
  run_wrk anticamera "$AC_PORT"
  run_wrk queue-page "$AC_PORT" /queue
  run_wrk status-poll "$AC_PORT" "/.anticamera/status?gate=q" -H "Cookie: $ticket" -H "Accept: application/json"
done

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
echo "| target | req/s (median) | p99 ms (median) | notes |"
echo "|---|---|---|---|"
for name in upstream-direct nginx anticamera queue-page status-poll; do
  rps=$(awk -v n="$name" '$1==n {print $2}' "$work/results" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  p99=$(awk -v n="$name" '$1==n {print $3}' "$work/results" | while read -r v; do to_ms "$v"; done | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  notes=$(awk -v n="$name" '$1==n && NF>3 {$1=$2=$3=""; print}' "$work/results" | head -1)
  echo "| $name | $rps | $p99 | ${notes:-} |"
  eval "rps_${name//-/_}=$rps; p99_${name//-/_}=$p99"
done
echo
awk -v a="$rps_anticamera" -v n="$rps_nginx" -v pa="$p99_anticamera" -v pn="$p99_nginx" \
  'BEGIN { printf "anticamera / nginx: throughput %.2fx, p99 %.2fx (lower is better)\n", a/n, pa/pn }'
awk -v q="$rps_queue_page" -v s="$rps_status_poll" -v n="$rps_nginx" \
  'BEGIN { printf "waiting room vs nginx proxying: queue page %.2fx, JSON status poll %.2fx\n", q/n, s/n }'
echo "peak RSS: anticamera ${ac_hwm} KiB, nginx proxy workers ${nginx_hwm} KiB (sum)"
echo
echo "raw rounds:"; cat "$work/results"

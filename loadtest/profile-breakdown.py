#!/usr/bin/env python3
"""Where each microsecond of a proxy's forwarded request goes: perf's flat profile (dso,sym),
split into categories and scaled by the CPU per request measured from /proc over the same run."""
import re, sys
RULES = [
    # kernel
    ("kernel: scheduling, sleeps and wake-ups", "k", r"finish_task_switch|_raw_spin_unlock_irq|schedule|ttwu|try_to_wake_up|wake_up|select_task_rq|enqueue_|dequeue_|pick_next|update_curr|update_load|psi_|futex|ep_poll|do_epoll|ep_item_poll|ep_send_events|ep_autoremove|__wake|native_sched|set_next_entity|put_prev|switch_mm|__switch_to|prepare_task_switch|sched_|cpuacct|hrtick|rseq|reweight|available_idle|idle_cpu|nohz|tick_"),
    ("kernel: TCP/IP on loopback (both directions)", "k", r"tcp|^ip_|__ip|skb|net_rx|netif|napi|loopback|__dev_queue|dev_hard|process_backlog|inet|bbr|sk_|__sk|sock_def|sock_rfree|sock_wfree|validate_xmit|eth_|nf_|ipv4|raw_local_deliver|__kfree_skb|kfree_skb|csum|lock_sock|release_sock|__release_sock|sk_stream|neigh|dst_|rt_|fib_|qdisc|pfifo|__qdisc|do_softirq|__do_softirq|irq_exit|__local_bh|local_bh|softirq|rps_|__build_skb|__napi|gro_|sock_poll|tcp_poll"),
    ("kernel: system calls, file and copy", "k", r"syscall|entry_SYSCALL|do_syscall|vfs_|fdget|__fget|fput|ksys_|__x64_sys|__sys_|sock_write_iter|sock_read_iter|sock_recvmsg|sock_sendmsg|_copy_to_iter|_copy_from_iter|copy_user|__check_object_size|__virt_addr_valid|check_heap_object|import_iovec|iovec|rw_verify_area|security_|apparmor|aa_|fsnotify|__fsnotify|do_writev|do_iter|iov_iter|syscall_exit|exit_to_user|fpregs|restore_fpregs|switch_fpu|arch_exit|__rseq|clear_bhb|x64_sys_call|__audit|audit_"),
    ("kernel: memory", "k", r"kmem_cache|kfree|__kmalloc|kmalloc|slab|alloc_pages|__alloc|page_|folio|memcg|mod_memcg|obj_cgroup|refill_obj|__memcg|get_page_from|free_unref|__free_pages|kmalloc_reserve|percpu"),
    ("kernel: clock", "k", r"read_tsc|ktime|clock|timekeeping|hrtimer"),
    ("kernel: other", "k", r".*"),
    # user space
    ("user: hyper-util pooled client (checkout, channel to the connection task)", "u", r"hyper_util::client|hyper_util::common|pool::|Checkout|dispatch::Receiver|dispatch::Sender|want::|tokio::sync::mpsc|tokio::sync::oneshot|futures_channel"),
    ("user: hyper HTTP/1 server and client (parse, encode, dispatch)", "u", r"^hyper|<hyper|hyper::|httparse|hyper_util::server|Http1Transaction"),
    ("user: header maps and HTTP types", "u", r"http::header|http::uri|http::request|http::response|HeaderMap|HeaderValue|HeaderName|http::method|bytes::|Bytes|sip::Hasher|hash_elem|RandomState|BuildHasher"),
    ("user: allocator (mimalloc)", "u", r"^_?mi_|mimalloc|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc|RawVec|drop_in_place<alloc|alloc::raw_vec|Vec<"),
    ("user: tokio runtime (tasks, I/O driver, timers)", "u", r"tokio::|mio::|Waker|wake_by|RawWaker|park|futures_util|core::future|Map<Fut|Pin<|poll_fn|PollFn"),
    ("user: anticamera (request path: routing, isolation, framing, forwarded headers, metrics)", "u", r"anticamera|metrics::|metrics_util|itoa|ryu|core::fmt|alloc::fmt|fmt::|Display|Write|quanta|arc_swap|ArcSwap"),
    ("user: nginx (event loop, HTTP parse, proxy module)", "u", r"ngx_"),
    ("user: libc (memcpy, syscall stubs)", "u", r".*"),
]
def load(prefix):
    cpu = dict(zip(*[iter(open(prefix + ".cpu").read().split())]*2))
    per = float(cpu["cpu_us_per_request"]); usr = float(cpu["user"]); sysv = float(cpu["system"])
    cats = {name: 0.0 for name, _, _ in RULES}
    for line in open(prefix + ".sym.txt"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if not m: continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        space = "k" if kind == "k" else "u"
        for name, sp, rx in RULES:
            if sp == space and re.search(rx, sym):
                cats[name] += pct; break
    return per, usr, sysv, cats
# Usage: loadtest/profile-breakdown.py DIR/nginx DIR/anticamera   (the files PROFILE=DIR of
# loadtest/bench-forward.sh writes: .cpu and .sym.txt)
a, b = sys.argv[1], sys.argv[2]
pa, ua, sa, ca = load(a); pb, ub, sb, cb = load(b)
print(f"| where (share of the proxy's CPU samples × its CPU per request) | {a.split('/')[-1]} µs | {b.split('/')[-1]} µs |")
print("|---|---:|---:|")
for name, _, _ in RULES:
    x, y = ca[name] / 100 * pa, cb[name] / 100 * pb
    if x < 0.05 and y < 0.05: continue
    print(f"| {name} | {x:.2f} | {y:.2f} |")
ka = sum(v for n, v in ca.items() if n.startswith("kernel")); kb = sum(v for n, v in cb.items() if n.startswith("kernel"))
print(f"| **kernel, from the samples** | **{ka/100*pa:.2f}** | **{kb/100*pb:.2f}** |")
print(f"| **user, from the samples** | **{(100-ka)/100*pa:.2f}** | **{(100-kb)/100*pb:.2f}** |")
print(f"| /proc over the run: user / system / total | {ua:.2f} / {sa:.2f} / {pa:.2f} | {ub:.2f} / {sb:.2f} / {pb:.2f} |")

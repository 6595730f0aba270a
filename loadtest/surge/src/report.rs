//! The report of a run: one JSON object (every figure, the per-second timeline, the checks),
//! a human summary on the terminal, and a Markdown table of runs side by side.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::Class;
use crate::scenario::Scenario;
use crate::verify::{self, UserLog};
use crate::vu::{lock, vu_state, Ctx, Step};

/// What was sampled during a run besides the users' own records.
#[derive(Debug, Default)]
pub struct Samples {
    /// Per second: the portal's peak requests in flight.
    pub portal_peak: Vec<(u64, u64)>,
    /// Per second: users waiting, users active.
    pub gauges: Vec<(u64, u64, u64)>,
    /// Per second: (seconds since the start, the portal's useful work so far in µs).
    pub portal_work: Vec<(f64, u64)>,
    /// Per second: (seconds since the start, the portal's time in requests so far in µs).
    pub portal_busy: Vec<(f64, u64)>,
    /// With several nodes, per second: (second, which nodes hold the leader lease, the store
    /// round trips of all nodes so far).
    pub fleet: Vec<(u64, Vec<bool>, f64)>,
}

/// Adds the `fleet` section of a run through several nodes ([`crate::fleet::FleetRun`]), and
/// its headline figures to the summary.
pub fn add_fleet(r: &mut Value, fleet: Value) {
    let n = fleet["nodes"].clone();
    let trips = &fleet["round_trips"];
    let (adm, wait) = (
        trips["per_admitted_person"].clone(),
        trips["per_waiting_person_minute"].clone(),
    );
    if let Some(s) = r.get_mut("summary").and_then(Value::as_object_mut) {
        s.insert("nodes".into(), n.clone());
        s.insert("redis_round_trips_per_admitted_person".into(), adm);
        s.insert("redis_round_trips_per_waiting_person_minute".into(), wait);
    }
    if let Some(o) = r.as_object_mut() {
        o.insert("nodes".into(), n);
        o.insert("fleet".into(), fleet);
    }
}

/// A portal time counter (useful work or time in requests) per sampling interval, in percent
/// of its capacity: for each pair of consecutive samples, (second, percent). `capacity`
/// requests in flight all the time make 100%.
pub fn useful_pct(work: &[(f64, u64)], capacity: usize) -> Vec<(u64, f64)> {
    work.windows(2)
        .filter_map(|w| {
            let ((t0, w0), (t1, w1)) = (w[0], w[1]);
            let dt = t1 - t0;
            (dt > 0.0 && capacity > 0).then(|| {
                (
                    t1.floor() as u64,
                    w1.saturating_sub(w0) as f64 / 1e6 / dt / capacity as f64 * 100.0,
                )
            })
        })
        .collect()
}

/// Mean of `useful` over the seconds when at least `capacity` people were in the run (waiting
/// or active, at both ends of the second): the portal's goodput while demand exceeded its
/// capacity. None when there was no such second.
pub fn saturated_goodput(
    useful: &[(u64, f64)],
    gauges: &[(u64, u64, u64)],
    capacity: usize,
) -> Option<(f64, usize)> {
    let busy = |s: u64| {
        gauges
            .iter()
            .find(|g| g.0 == s)
            .is_some_and(|g| g.1 + g.2 >= capacity as u64)
    };
    mean_where(useful, |s| s > 0 && busy(s - 1) && busy(s))
}

/// Mean of the per-second values whose second passes `keep`, and how many; None if none.
fn mean_where(useful: &[(u64, f64)], keep: impl Fn(u64) -> bool) -> Option<(f64, usize)> {
    let v: Vec<f64> = useful
        .iter()
        .filter(|&&(s, _)| keep(s))
        .map(|&(_, p)| p)
        .collect();
    (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, v.len()))
}

/// Mean of `useful` over the seconds during all of which someone waited to be let in: asked
/// for a gated page (`waiting[i]` = (first gated request sent, let in), in ms) no later than
/// the second's start and was let in after its end. Issue 14's measure, "the portal's useful
/// work while people wait": unlike [`saturated_goodput`] it leaves out the seconds in which
/// the crowd is still reading open pages before the gate, and those after the line is empty
/// (people inside finishing, nobody left to let in). None when there was no such second.
pub fn waiting_goodput(useful: &[(u64, f64)], waiting: &[(u64, u64)]) -> Option<(f64, usize)> {
    mean_where(useful, |s| {
        s > 0
            && waiting
                .iter()
                .any(|&(from, to)| from <= (s - 1) * 1000 && to > s * 1000)
    })
}

/// An HDR histogram of microsecond latencies, summarised in milliseconds.
pub fn hdr_summary(us: impl IntoIterator<Item = u64>) -> Value {
    let Ok(mut h) = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
        return Value::Null;
    };
    for v in us {
        h.saturating_record(v.max(1));
    }
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let ms = |v: u64| round2(v as f64 / 1000.0);
    let buckets: Vec<Value> = h
        .iter_log(1000, 2.0)
        .filter(|b| b.count_since_last_iteration() > 0)
        .map(|b| json!({ "le_ms": ms(b.value_iterated_to()), "count": b.count_since_last_iteration() }))
        .collect();
    json!({
        "count": h.len(),
        "mean": round2(h.mean() / 1000.0),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "histogram": buckets,
    })
}

/// Everything about one run, as JSON.
#[allow(clippy::too_many_arguments)]
pub fn build_report(
    ctx: &Ctx,
    label: &str,
    target: &str,
    elapsed: Duration,
    cut: bool,
    before: Option<Value>,
    after: Option<Value>,
    samples: &Samples,
) -> Value {
    let sc: &Scenario = &ctx.sc;
    let rec = lock(&ctx.rec);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let count = |s: u8| {
        ctx.states
            .iter()
            .filter(|x| x.load(std::sync::atomic::Ordering::Relaxed) == s)
            .count()
    };
    let completed = rec.journeys.len();

    // Requests by class, status, step.
    let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut status_mix: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_step: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut step_lat: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut admitted = Vec::new();
    let mut admitted_ok = Vec::new();
    // The pages of people let in (behind the gate in every scenario).
    let mut inside = Vec::new();
    let mut portal_ok = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let n_buckets = (elapsed.as_millis() as u64 / 1000 + 1) as usize;
    let bucket = |t: u64| ((t / 1000) as usize).min(n_buckets - 1);
    let mut lat_by_s: Vec<Vec<u64>> = vec![Vec::new(); n_buckets];
    let mut err_by_s = vec![0u64; n_buckets];
    for r in &rec.recs {
        *by_class.entry(r.class.as_str()).or_default() += 1;
        *status_mix.entry(r.status.to_string()).or_default() += 1;
        let key = match r.class {
            Class::Queue => "503-queue".to_string(),
            Class::Poll => format!("{}-poll", r.status),
            Class::Timeout => "timeout".to_string(),
            Class::Transport => "transport".to_string(),
            Class::LeakGuard => "502-leak-guard".to_string(),
            Class::Refused => format!("{}-refused", r.status),
            Class::Portal => r.status.to_string(),
        };
        *by_status.entry(key.clone()).or_default() += 1;
        *by_step
            .entry(r.step.as_str())
            .or_default()
            .entry(key.clone())
            .or_default() += 1;
        let is_err = r.step != Step::Bot
            && match r.class {
                Class::Portal => r.status >= 500,
                Class::Refused | Class::LeakGuard | Class::Timeout | Class::Transport => true,
                Class::Queue | Class::Poll => false,
            };
        if is_err {
            *errors.entry(key).or_default() += 1;
            err_by_s[bucket(r.t_ms)] += 1;
        }
        if r.step != Step::Bot
            && matches!(
                r.class,
                Class::Portal | Class::LeakGuard | Class::Timeout | Class::Transport
            )
        {
            admitted.push(r.latency_us);
            if matches!(r.step, Step::Account | Step::ClaimForm | Step::ClaimSubmit) {
                inside.push(r.latency_us);
            }
            lat_by_s[bucket(r.t_ms)].push(r.latency_us);
            step_lat
                .entry(r.step.as_str())
                .or_default()
                .push(r.latency_us);
            if r.class == Class::Portal && (200..400).contains(&r.status) {
                admitted_ok.push(r.latency_us);
                portal_ok += 1;
            }
        }
    }
    let polls: Vec<u64> = rec
        .recs
        .iter()
        .filter(|r| r.step == Step::Status)
        .map(|r| r.latency_us)
        .collect();
    let journey_us: Vec<u64> = rec.journeys.iter().map(|j| j.1).collect();

    // The checks.
    let logs: &[UserLog] = &rec.logs;
    let inv = verify::admission_inversions(logs);
    let overtakes = verify::arrival_overtakes(logs);
    let est = verify::estimate_errors(logs);
    let regressions: u64 = logs.iter().map(|l| u64::from(l.position_regressions)).sum();
    let regressed_users = logs.iter().filter(|l| l.position_regressions > 0).count();
    let missed_turn = logs.iter().filter(|l| l.missed_turn).count();

    // Timeline, one entry per second.
    let mut arrivals = vec![0u64; n_buckets];
    for &t in &rec.arrivals {
        arrivals[bucket(t)] += 1;
    }
    let mut admitted_s = vec![0u64; n_buckets];
    for l in logs {
        if let Some(t) = l.admitted_ms {
            admitted_s[bucket(t)] += 1;
        }
    }
    let mut done = vec![0u64; n_buckets];
    for j in &rec.journeys {
        done[bucket(j.0)] += 1;
    }
    let mut waiting = vec![Value::Null; n_buckets];
    let mut active = vec![Value::Null; n_buckets];
    for &(s, w, a) in &samples.gauges {
        if let Some(i) = usize::try_from(s).ok().filter(|&i| i < n_buckets) {
            waiting[i] = json!(w);
            active[i] = json!(a);
        }
    }
    let mut in_flight = vec![Value::Null; n_buckets];
    for &(s, p) in &samples.portal_peak {
        if let Some(i) = usize::try_from(s).ok().filter(|&i| i < n_buckets) {
            in_flight[i] = json!(p);
        }
    }
    let useful = useful_pct(&samples.portal_work, sc.portal.capacity);
    let mut useful_s = vec![Value::Null; n_buckets];
    for &(s, p) in &useful {
        if let Some(i) = usize::try_from(s).ok().filter(|&i| i < n_buckets) {
            useful_s[i] = json!(round2(p));
        }
    }
    let saturated = saturated_goodput(&useful, &samples.gauges, sc.portal.capacity);
    // Who waited to be let in, and when: from their first gated request to the answer that let
    // them in (people held at the front wait inside that request).
    let waited: Vec<(u64, u64)> = logs
        .iter()
        .filter_map(|l| {
            let from = l.ticket_sent_ms.or(l.first_gated_sent_ms)?;
            Some((from, l.admitted_ms?)).filter(|(f, t)| t > f)
        })
        .collect();
    let while_waiting = waiting_goodput(&useful, &waited);
    let busy = useful_pct(&samples.portal_busy, sc.portal.capacity);
    let saturated_busy = saturated_goodput(&busy, &samples.gauges, sc.portal.capacity);
    let pct = |q: f64| -> Vec<Value> {
        lat_by_s
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.sort_unstable();
                percentile(&v, q)
                    .map(|us| json!(round2(us as f64 / 1000.0)))
                    .unwrap_or(Value::Null)
            })
            .collect()
    };
    let timeline = json!({
        "t_s": (0..n_buckets).collect::<Vec<_>>(),
        "arrivals": arrivals,
        "waiting": waiting,
        "active": active,
        "admitted": admitted_s,
        "done": done,
        "portal_in_flight": in_flight,
        "portal_useful_pct": useful_s,
        "portal_capacity": sc.portal.capacity,
        "latency_p50_ms": pct(50.0),
        "latency_p90_ms": pct(90.0),
        "latency_p99_ms": pct(99.0),
        "errors": err_by_s,
    });

    let sampled_max = samples.portal_peak.iter().map(|s| s.1).max();
    let peak = after
        .as_ref()
        .and_then(|v| v.get("peak_in_flight"))
        .and_then(Value::as_u64);
    let within = peak.map(|p| p <= sc.portal.capacity as u64);
    let leak_examples: Vec<Value> = rec
        .leak_examples
        .iter()
        .map(|l| {
            json!({ "vu": l.vu, "user": format!("vu{}", l.vu), "path": l.path,
                    "x_portal_user": l.header, "body_users": l.body })
        })
        .collect();
    let hdr = hdr_summary(admitted.iter().copied());
    let bots = sc.bots();
    let people = sc.users.count - bots;

    json!({
        "tool": "surge",
        "label": label,
        "mode": label,
        "scenario": sc.name,
        "description": sc.description,
        "target": target,
        "summary": {
            "users": people,
            "bots": bots,
            "journeys_done": completed,
            "leaks": rec.leaks + rec.bot_personal_pages,
            "portal_peak_in_flight": peak,
            "portal_capacity": sc.portal.capacity,
            "admission_inversions": inv.answers,
            "position_regressions": regressions,
            "wait_estimate_median_abs_error_pct": est.median_abs_error_pct.map(round2),
            "latency_ms": hdr.clone(),
            "status_mix": status_mix,
        },
        "portal": {
            "capacity": sc.portal.capacity,
            "base_latency_ms": sc.portal.base_latency.as_millis() as u64,
            "fault_mode": sc.portal.fault_mode,
            "release_header": sc.portal.release,
            "before": before,
            "after": after,
            "peak_in_flight": peak,
            "sampled_max_in_flight": sampled_max,
            "within_capacity": within,
        },
        "users": people,
        "arrival": {
            "shape": format!("{:?}", sc.users.arrival).to_lowercase(),
            "over_s": sc.users.over.as_secs_f64(),
            "rate_per_s": round2(sc.users.count as f64 / sc.users.over.as_secs_f64().max(1e-3)),
        },
        "behaviour": {
            "json": sc.behaviour.json,
            "impatient": sc.behaviour.impatient,
            "abandon": sc.behaviour.abandon,
            "bots": sc.behaviour.bots,
            "plain": sc.behaviour.plain,
            "max_wait_s": sc.behaviour.max_wait.as_secs_f64(),
            "cohorts": sc.cohorts,
        },
        // People by persona: plain (Retry-After only), impatient (reloads), api (JSON, the
        // status protocol), page (HTML, the page's script).
        "personas": rec.personas.iter().map(|(k, (people, done))| {
            (k.to_string(), json!({"people": people, "completed": done}))
        }).collect::<serde_json::Map<_, _>>(),
        "duration_limit_s": sc.run.duration.as_secs_f64(),
        "elapsed_s": round2(secs),
        "cut_at_duration": cut,
        "journeys": {
            "completed": completed,
            "failed": count(vu_state::FAILED),
            "gave_up_waiting": count(vu_state::GAVE_UP),
            "abandoned": count(vu_state::ABANDONED),
            "unfinished": count(vu_state::ACTIVE) + count(vu_state::WAITING) + count(vu_state::PENDING),
            "unfinished_waiting": count(vu_state::WAITING),
            "unfinished_active": count(vu_state::ACTIVE),
            "not_started": count(vu_state::PENDING),
            "failures": rec.failures,
            "with_leak": rec.leak_journeys,
            "duration_ms": summary_ms(journey_us),
        },
        "goodput": {
            "journeys_per_s": round2(completed as f64 / secs),
            "portal_ok_per_s": round2(portal_ok as f64 / secs),
            "portal_ok_responses": portal_ok,
            "portal_useful_pct_saturated": saturated.map(|s| round2(s.0)),
            "portal_busy_pct_saturated": saturated_busy.map(|s| round2(s.0)),
            "saturated_seconds": saturated.map_or(0, |s| s.1),
            "portal_useful_pct_while_waiting": while_waiting.map(|s| round2(s.0)),
            "waiting_seconds": while_waiting.map_or(0, |s| s.1),
        },
        "latency_ms": {
            "admitted": hdr,
            "admitted_ok": hdr_summary(admitted_ok.iter().copied()),
            "inside": hdr_summary(inside.iter().copied()),
            "by_step": step_lat.into_iter().map(|(k, v)| (k.to_string(), summary_ms(v))).collect::<serde_json::Map<_, _>>(),
            "status_poll": summary_ms(polls),
        },
        "requests": {
            "total": rec.recs.len(),
            "by_class": by_class,
            "by_status": by_status,
            "by_step": by_step,
        },
        "errors": {
            "total": errors.values().sum::<u64>(),
            "by_status": errors,
        },
        "queue": {
            "users_queued": rec.queued_users,
            "poll_errors": rec.poll_errors,
            "reloads": rec.reloads,
            "plain_retries": rec.plain_retries,
            "sent_back_after_admitted": rec.sent_back,
            "admitted_to_in_ms": summary_ms(rec.admitted_to_in.clone()),
            "wait_ms_of_completed": summary_ms(rec.queue_waits.clone()),
        },
        "verification": {
            "admission_inversions": inv.answers,
            "users_with_inversion": inv.users,
            "waiting_answers_checked": inv.checked,
            "arrival_overtakes": overtakes,
            "position_regressions": regressions,
            "users_with_position_regression": regressed_users,
            "users_who_missed_their_turn": missed_turn,
            "wait_estimate": {
                "compared_users": est.compared,
                "min_wait_s": verify::MIN_WAIT_S,
                "median_abs_error_pct": est.median_abs_error_pct.map(round2),
                "p90_abs_error_pct": est.p90_abs_error_pct.map(round2),
                "median_abs_error_s": est.median_abs_error_s.map(round2),
                "median_bias_pct": est.median_bias_pct.map(round2),
            },
        },
        "wait_estimates": est.points.iter().map(|(e, a)| json!([e, round2(*a)])).collect::<Vec<_>>(),
        "isolation": {
            "checked": rec.iso_checked,
            "checked_by_path": rec.iso_checked_by_path,
            "ok": rec.iso_ok,
            "leaks": rec.leaks,
            "leaks_by_path": rec.leaks_by_path,
            "leak_guard_502": by_class.get("leak_guard").copied().unwrap_or(0),
            "incomplete_marker": rec.iso_incomplete,
            "unverifiable": rec.iso_unverifiable,
            "leak_examples": leak_examples,
            "bot_personal_pages": rec.bot_personal_pages,
        },
        "bots": {
            "count": bots,
            "answers_by_status": rec.bot_statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "release": {
            "release_header_seen_by_client": rec.release_header_seen,
            "pass_cleared_on_submit": rec.pass_cleared,
        },
        "timeline": timeline,
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `{count, p50, p90, p99, max}` in milliseconds of microsecond samples.
pub fn summary_ms(mut us: Vec<u64>) -> Value {
    us.sort_unstable();
    let ms = |v: Option<u64>| v.map(|v| (v as f64 / 1000.0 * 100.0).round() / 100.0);
    json!({
        "count": us.len(),
        "p50": ms(percentile(&us, 50.0)),
        "p90": ms(percentile(&us, 90.0)),
        "p99": ms(percentile(&us, 99.0)),
        "max": ms(us.last().copied()),
    })
}
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn print_summary(r: &Value) {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let lat = |v: &Value| {
        format!(
            "n={} p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            s(&v["count"]),
            s(&v["p50"]),
            s(&v["p90"]),
            s(&v["p99"]),
            s(&v["max"])
        )
    };
    let j = &r["journeys"];
    let p = &r["portal"];
    println!(
        "surge {} [{}] {} users → {}   (elapsed {} s{})",
        s(&r["scenario"]),
        s(&r["label"]),
        s(&r["users"]),
        s(&r["target"]),
        s(&r["elapsed_s"]),
        if r["cut_at_duration"] == json!(true) {
            ", cut at run.duration"
        } else {
            ""
        }
    );
    println!(
        "  arrival      {} over {} s ({} users/s)",
        s(&r["arrival"]["shape"]),
        s(&r["arrival"]["over_s"]),
        r["arrival"]["rate_per_s"]
            .as_f64()
            .map(|x| format!("{x:.0}"))
            .unwrap_or("-".into())
    );
    println!(
        "  journeys     completed {}, failed {}, gave up waiting {}, abandoned {}, unfinished {} (waiting {}, active {}, not started {})",
        s(&j["completed"]),
        s(&j["failed"]),
        s(&j["gave_up_waiting"]),
        s(&j["abandoned"]),
        s(&j["unfinished"]),
        s(&j["unfinished_waiting"]),
        s(&j["unfinished_active"]),
        s(&j["not_started"])
    );
    if let Some(p) = r["personas"].as_object().filter(|p| !p.is_empty()) {
        let list: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{k} {}/{}", s(&v["completed"]), s(&v["people"])))
            .collect();
        println!("  personas     completed/people: {}", list.join(", "));
    }
    if let Some(f) = j["failures"].as_object().filter(|f| !f.is_empty()) {
        let list: Vec<String> = f.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  failures     {}", list.join(", "));
    }
    println!(
        "  goodput      {} journeys/s, {} portal OK responses/s; while saturated ({} s) the portal did {} % of its capacity in useful work, and was {} % busy",
        s(&r["goodput"]["journeys_per_s"]),
        s(&r["goodput"]["portal_ok_per_s"]),
        s(&r["goodput"]["saturated_seconds"]),
        s(&r["goodput"]["portal_useful_pct_saturated"]),
        s(&r["goodput"]["portal_busy_pct_saturated"])
    );
    println!(
        "  waiting      while people waited to be let in ({} s) the portal did {} % of its capacity in useful work",
        s(&r["goodput"]["waiting_seconds"]),
        s(&r["goodput"]["portal_useful_pct_while_waiting"])
    );
    println!("  admitted     {}", lat(&r["latency_ms"]["admitted"]));
    println!("  journey      {}", lat(&j["duration_ms"]));
    println!(
        "  queue        {} users queued, wait of completed: {}",
        s(&r["queue"]["users_queued"]),
        lat(&r["queue"]["wait_ms_of_completed"])
    );
    if p["after"].is_object() {
        let a = &p["after"];
        println!(
            "  portal       peak in flight {} / capacity {} → {}; sampled max {}; 2xx {} 3xx {} 4xx {} 5xx {}; injected errors {}, hangs {}, leaks served {}, claims {}",
            s(&p["peak_in_flight"]),
            s(&p["capacity"]),
            match p["within_capacity"] {
                Value::Bool(true) => "WITHIN",
                Value::Bool(false) => "EXCEEDED",
                _ => "?",
            },
            s(&p["sampled_max_in_flight"]),
            s(&a["responses_2xx"]),
            s(&a["responses_3xx"]),
            s(&a["responses_4xx"]),
            s(&a["responses_5xx"]),
            s(&a["errors_injected"]),
            s(&a["timeouts_started"]),
            s(&a["leaks_served"]),
            s(&a["claims_submitted"])
        );
    }
    let i = &r["isolation"];
    println!(
        "  isolation    {} personal responses checked: {} ok, {} LEAKS, {} leak-guard 502, {} incomplete marker, {} unverifiable",
        s(&i["checked"]),
        s(&i["ok"]),
        s(&i["leaks"]),
        s(&i["leak_guard_502"]),
        s(&i["incomplete_marker"]),
        s(&i["unverifiable"])
    );
    if let Some(ex) = i["leak_examples"].as_array().filter(|e| !e.is_empty()) {
        for e in ex.iter().take(3) {
            println!(
                "    leak: {} asked {} and got x-portal-user={} body users={}",
                s(&e["user"]),
                s(&e["path"]),
                s(&e["x_portal_user"]),
                s(&e["body_users"])
            );
        }
    }
    if let Some(e) = r["errors"]["by_status"].as_object() {
        let list: Vec<String> = e.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "  errors       {} ({})",
            s(&r["errors"]["total"]),
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    let v = &r["verification"];
    println!(
        "  order        {} admission inversions ({} waiting answers checked), {} arrival overtakes, {} position regressions, {} users missed their turn",
        s(&v["admission_inversions"]),
        s(&v["waiting_answers_checked"]),
        s(&v["arrival_overtakes"]),
        s(&v["position_regressions"]),
        s(&v["users_who_missed_their_turn"])
    );
    let e = &v["wait_estimate"];
    println!(
        "  estimate     {} users compared (waits >= {} s): median error {} % ({} s), p90 {} %, median bias {} %",
        s(&e["compared_users"]),
        s(&e["min_wait_s"]),
        s(&e["median_abs_error_pct"]),
        s(&e["median_abs_error_s"]),
        s(&e["p90_abs_error_pct"]),
        s(&e["median_bias_pct"])
    );
    if r["bots"]["count"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  bots         {} bots, answers {}, personal pages served to bots {}",
            s(&r["bots"]["count"]),
            s(&r["bots"]["answers_by_status"]),
            s(&r["isolation"]["bot_personal_pages"])
        );
    }
    let f = &r["fleet"];
    if f.is_object() {
        let t = &f["round_trips"];
        println!(
            "  fleet        {} nodes on one Redis: {} store round trips ({} for admissions, {} for waiting people, {} background); per admitted person {}, per waiting person-minute {}, background {}/s per node; Redis counted {} commands ({} per round trip)",
            s(&f["nodes"]),
            s(&t["total"]),
            s(&t["admission_ops"]),
            s(&t["waiting_ops"]),
            s(&t["background_ops"]),
            s(&t["per_admitted_person"]),
            s(&t["per_waiting_person_minute"]),
            s(&t["background_per_node_per_s"]),
            s(&f["redis"]["commands_processed"]),
            s(&f["redis"]["commands_per_round_trip"])
        );
        if t["failed"].as_u64().unwrap_or(0) + t["busy"].as_u64().unwrap_or(0) > 0 {
            println!(
                "    round trips that failed {} {}, not made (8 in flight) {} {}: the fail mode answered those",
                s(&t["failed"]),
                s(&t["failed_by_op"]),
                s(&t["busy"]),
                s(&t["busy_by_op"])
            );
        }
        for n in f["per_node"].as_array().into_iter().flatten() {
            println!(
                "    {}  {} requests served ({} sent), {} round trips, leader {} s{}",
                s(&n["node"]),
                s(&n["requests"]),
                s(&n["requests_sent"]),
                s(&n["round_trips"]),
                s(&n["leader_seconds"]),
                if n["leader_at_end"] == json!(true) {
                    ", leader at the end"
                } else {
                    ""
                }
            );
        }
        if let Some(m) = f["nodes_not_read"].as_array().filter(|m| !m.is_empty()) {
            println!("    NOT READ at the start or the end: {m:?} (their figures are missing from the sums)");
        }
    }
    println!(
        "  release      header seen by client {}, pass cleared on submit {}",
        s(&r["release"]["release_header_seen_by_client"]),
        s(&r["release"]["pass_cleared_on_submit"])
    );
}

/// A JSON value as a table cell: `-` for null, one decimal for fractional numbers.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A Markdown table of reports side by side (one column per run).
pub fn markdown_table(reports: &[Value]) -> String {
    let s = cell;
    type Row = (&'static str, fn(&Value) -> Vec<Value>);
    let rows: [Row; 27] = [
        ("users", |r| vec![r["users"].clone()]),
        ("arrival (users/s over s)", |r| {
            vec![
                r["arrival"]["rate_per_s"].clone(),
                r["arrival"]["over_s"].clone(),
            ]
        }),
        ("journeys completed", |r| {
            vec![r["journeys"]["completed"].clone()]
        }),
        ("failed / gave up / unfinished", |r| {
            vec![
                r["journeys"]["failed"].clone(),
                r["journeys"]["gave_up_waiting"].clone(),
                r["journeys"]["unfinished"].clone(),
            ]
        }),
        ("people by persona (completed of)", |r| {
            let list = r["personas"].as_object().map(|p| {
                p.iter()
                    .map(|(k, v)| {
                        format!("{k} {} of {}", cell(&v["completed"]), cell(&v["people"]))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            vec![list.map_or(Value::Null, Value::String)]
        }),
        ("goodput (journeys/s)", |r| {
            vec![r["goodput"]["journeys_per_s"].clone()]
        }),
        ("portal OK responses/s", |r| {
            vec![r["goodput"]["portal_ok_per_s"].clone()]
        }),
        (
            "while saturated: portal useful work % / busy % of C / seconds",
            |r| {
                vec![
                    r["goodput"]["portal_useful_pct_saturated"].clone(),
                    r["goodput"]["portal_busy_pct_saturated"].clone(),
                    r["goodput"]["saturated_seconds"].clone(),
                ]
            },
        ),
        (
            "while people waited: portal useful work % of C / seconds",
            |r| {
                vec![
                    r["goodput"]["portal_useful_pct_while_waiting"].clone(),
                    r["goodput"]["waiting_seconds"].clone(),
                ]
            },
        ),
        ("admitted requests p50 / p99 (ms)", |r| {
            vec![
                r["latency_ms"]["admitted"]["p50"].clone(),
                r["latency_ms"]["admitted"]["p99"].clone(),
            ]
        }),
        (
            "people let in: account, claim form, submit p50 / p99 (ms)",
            |r| {
                vec![
                    r["latency_ms"]["inside"]["p50"].clone(),
                    r["latency_ms"]["inside"]["p99"].clone(),
                ]
            },
        ),
        ("journey p50 / p99 (ms, incl. queue)", |r| {
            vec![
                r["journeys"]["duration_ms"]["p50"].clone(),
                r["journeys"]["duration_ms"]["p99"].clone(),
            ]
        }),
        ("users queued", |r| vec![r["queue"]["users_queued"].clone()]),
        ("portal peak in flight / capacity", |r| {
            vec![
                r["portal"]["peak_in_flight"].clone(),
                r["portal"]["capacity"].clone(),
            ]
        }),
        ("portal 5xx (injected errors / hangs)", |r| {
            vec![
                r["portal"]["after"]["responses_5xx"].clone(),
                json!(format!(
                    "({} / {})",
                    cell(&r["portal"]["after"]["errors_injected"]),
                    cell(&r["portal"]["after"]["timeouts_started"])
                )),
            ]
        }),
        ("errors seen by users (5xx, refusals, timeouts)", |r| {
            vec![r["errors"]["total"].clone()]
        }),
        ("refused by the front (429/503)", |r| {
            vec![r["requests"]["by_class"]["refused"].clone()]
        }),
        ("LEAKS seen by users / served by portal", |r| {
            vec![
                r["isolation"]["leaks"].clone(),
                r["portal"]["after"]["leaks_served"].clone(),
            ]
        }),
        ("leak-guard 502", |r| {
            vec![r["isolation"]["leak_guard_502"].clone()]
        }),
        ("admission inversions / arrival overtakes", |r| {
            vec![
                r["verification"]["admission_inversions"].clone(),
                r["verification"]["arrival_overtakes"].clone(),
            ]
        }),
        ("queue position regressions", |r| {
            vec![r["verification"]["position_regressions"].clone()]
        }),
        ("told admitted, then queued again / admitted → in p50 / p90 (ms)", |r| {
            vec![
                r["queue"]["sent_back_after_admitted"].clone(),
                r["queue"]["admitted_to_in_ms"]["p50"].clone(),
                r["queue"]["admitted_to_in_ms"]["p90"].clone(),
            ]
        }),
        ("missed their turn (came back late, let in next)", |r| {
            vec![r["verification"]["users_who_missed_their_turn"].clone()]
        }),
        ("wait estimate: median abs. error % (users)", |r| {
            vec![
                r["verification"]["wait_estimate"]["median_abs_error_pct"].clone(),
                r["verification"]["wait_estimate"]["compared_users"].clone(),
            ]
        }),
        ("gave up / abandoned while waiting", |r| {
            vec![
                r["journeys"]["gave_up_waiting"].clone(),
                r["journeys"]["abandoned"].clone(),
            ]
        }),
        ("anticamera nodes (on one Redis)", |r| {
            vec![r["fleet"]["nodes"].clone()]
        }),
        (
            "Redis round trips per admitted person / per waiting person-minute / background per node/s",
            |r| {
                let t = &r["fleet"]["round_trips"];
                vec![
                    t["per_admitted_person"].clone(),
                    t["per_waiting_person_minute"].clone(),
                    t["background_per_node_per_s"].clone(),
                ]
            },
        ),
    ];
    let name = |r: &Value| {
        let n = match r["label"].as_str().or(r["mode"].as_str()) {
            Some("proxy") => "anticamera".to_string(),
            Some(m) => m.to_string(),
            None => "?".to_string(),
        };
        match r["nodes"].as_u64() {
            Some(k) if k > 1 => format!("{n} ({k} nodes)"),
            _ => n,
        }
    };
    let mut out = String::from("| |");
    for r in reports {
        out.push_str(&format!(" {} |", name(r)));
    }
    out.push_str("\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, f) in rows {
        out.push_str(&format!("| {label} |"));
        for r in reports {
            let cells: Vec<String> = f(r).iter().map(s).collect();
            let cell = if label.starts_with("portal 5xx") {
                cells.join(" ")
            } else {
                cells.join(" / ")
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_has_one_column_per_report() {
        let a = json!({"mode": "proxy", "users": 400, "journeys": {"completed": 12},
            "portal": {"peak_in_flight": 17, "capacity": 20, "after": {"responses_5xx": 0}},
            "isolation": {"leaks": 0},
            "personas": {"api": {"people": 10, "completed": 9}, "plain": {"people": 30, "completed": 3}}});
        let b = json!({"mode": "direct", "users": 400, "journeys": {"completed": 3},
            "isolation": {"leaks": 5}});
        let t = markdown_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| | anticamera | direct |");
        assert_eq!(lines[1], "|---|---:|---:|");
        assert!(t.contains("| journeys completed | 12 | 3 |"), "{t}");
        assert!(
            t.contains("| portal peak in flight / capacity | 17 / 20 | - / - |"),
            "{t}"
        );
        assert!(
            t.contains("| people by persona (completed of) | api 9 of 10, plain 3 of 30 | - |"),
            "{t}"
        );
        assert!(
            t.contains("| LEAKS seen by users / served by portal | 0 / - | 5 / - |"),
            "{t}"
        );
    }

    #[test]
    fn goodput_counts_only_seconds_when_demand_exceeded_capacity() {
        // 20 seconds of work in one second is a capacity of 20 fully used.
        let work = [
            (0.0, 0),
            (1.0, 20_000_000),
            (2.0, 30_000_000),
            (3.0, 30_000_000),
        ];
        let useful = useful_pct(&work, 20);
        assert_eq!(useful, vec![(1, 100.0), (2, 50.0), (3, 0.0)]);
        // Second 3 had 5 people in the run: not saturated, not counted.
        let gauges = [(0, 30, 10), (1, 15, 5), (2, 0, 20), (3, 0, 5)];
        assert_eq!(saturated_goodput(&useful, &gauges, 20), Some((75.0, 2)));
        assert_eq!(saturated_goodput(&useful, &gauges[3..], 20), None);
        // Someone waited from 0.5 s to 3.2 s: only seconds 2 and 3 ((1, 2] and (2, 3]) were
        // waited through whole; a wait from 3.0 to 3.5 s covers no whole second.
        let useful = [(1, 50.0), (2, 80.0), (3, 100.0), (4, 40.0)];
        assert_eq!(
            waiting_goodput(&useful, &[(500, 3_200), (3_000, 3_500)]),
            Some((90.0, 2))
        );
        assert_eq!(waiting_goodput(&useful, &[(3_000, 3_500)]), None);
        assert!(useful_pct(&work, 0).is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        let s = summary_ms(vec![3000, 1000, 2000]);
        assert_eq!(s["p50"], json!(2.0));
        assert_eq!(s["max"], json!(3.0));
        assert_eq!(s["count"], json!(3));
    }
}

//! The checks a run is judged on, from what each user saw (pure functions, unit-tested).
//!
//! * **Admission inversions** (fifo gates): a user told "wait, your number is A" by a request
//!   sent *after* someone with a later number B > A was seen admitted — or after someone who
//!   arrived later than A walked straight in. Compared within a cohort (one lane each).
//! * **Arrival overtakes**: a user who asked for a ticket after another user already held one,
//!   yet got an earlier number (tickets not handed out in arrival order). Users whose order was
//!   drawn at opening (random pre-queue) are left out: their order is meant to be random.
//! * **Estimate error**: the first wait estimate a user saw against the wait they then had.
//!
//! A user told `missed_turn` (their turn came while they were away, and they now wait for the
//! next free place) is out of the inversion and estimate checks from then on: later numbers
//! let in meanwhile were not let in ahead of their turn, and their wait includes their own
//! absence. They are counted apart (`missed_turn`).

/// What one user saw (times in ms since the start of the run).
#[derive(Debug, Clone, Default)]
pub struct UserLog {
    /// Cohort index (lanes are per cohort).
    pub cohort: u8,
    /// When the request that got the user a ticket was sent / its answer received.
    pub ticket_sent_ms: Option<u64>,
    pub ticket_recv_ms: Option<u64>,
    /// When the first gated request was sent (for users let in without waiting).
    pub first_gated_sent_ms: Option<u64>,
    /// "Still waiting" answers: (request sent at, number).
    pub waits: Vec<(u64, u64)>,
    /// The first answer saying the user is in (response received at).
    pub admitted_ms: Option<u64>,
    /// The user's number (the last one seen).
    pub number: Option<u64>,
    /// Let in without ever waiting.
    pub direct: bool,
    /// Their order was drawn at an opening (random pre-queue).
    pub drawn: bool,
    /// The first estimate seen while waiting in an open queue: (seen at, estimated seconds).
    pub estimate: Option<(u64, u64)>,
    /// Answers whose position was worse than the one before (same queue, same ticket).
    pub position_regressions: u32,
    /// Told their turn came while they were away (the waiting room's late line).
    pub missed_turn: bool,
}

/// Result of the inversion check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inversions {
    /// "Still waiting" answers given after a later number was let in.
    pub answers: u64,
    /// Users who saw at least one.
    pub users: u64,
    /// Waiting answers checked.
    pub checked: u64,
}

/// Admission inversions, per cohort.
pub fn admission_inversions(users: &[UserLog]) -> Inversions {
    let mut out = Inversions::default();
    let cohorts: std::collections::BTreeSet<u8> = users.iter().map(|u| u.cohort).collect();
    for c in cohorts {
        // Admissions in time order: (at, number if numbered, arrival sent if direct).
        let mut adm: Vec<(u64, Option<u64>, Option<u64>)> = users
            .iter()
            .filter(|u| u.cohort == c)
            .filter_map(|u| {
                let at = u.admitted_ms?;
                if u.direct {
                    Some((at, None, u.first_gated_sent_ms))
                } else {
                    Some((at, u.number, None))
                }
            })
            .collect();
        adm.sort_unstable_by_key(|a| a.0);
        // Waiting answers in time order: (sent at, number, user index).
        let mut waits: Vec<(u64, u64, usize)> = users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.cohort == c)
            .flat_map(|(i, u)| u.waits.iter().map(move |&(t, n)| (t, n, i)))
            .collect();
        waits.sort_unstable_by_key(|w| w.0);
        let (mut k, mut max_number, mut max_direct_sent) = (0usize, None::<u64>, None::<u64>);
        let mut bad_users = std::collections::HashSet::new();
        for (sent, number, i) in waits {
            while k < adm.len() && adm[k].0 < sent {
                if let Some(n) = adm[k].1 {
                    max_number = Some(max_number.map_or(n, |m: u64| m.max(n)));
                }
                if let Some(s) = adm[k].2 {
                    max_direct_sent = Some(max_direct_sent.map_or(s, |m: u64| m.max(s)));
                }
                k += 1;
            }
            out.checked += 1;
            let later_number_in = max_number.is_some_and(|m| m > number);
            let later_arrival_in = match (max_direct_sent, users[i].ticket_recv_ms) {
                (Some(d), Some(t)) => d > t,
                _ => false,
            };
            if later_number_in || later_arrival_in {
                out.answers += 1;
                bad_users.insert(i);
            }
        }
        out.users += bad_users.len() as u64;
    }
    out
}

/// Users who got an earlier number than someone who already held a ticket when they asked.
pub fn arrival_overtakes(users: &[UserLog]) -> u64 {
    let cohorts: std::collections::BTreeSet<u8> = users.iter().map(|u| u.cohort).collect();
    let mut count = 0;
    for c in cohorts {
        let mut v: Vec<(u64, u64, u64)> = users
            .iter()
            .filter(|u| u.cohort == c && !u.drawn)
            .filter_map(|u| Some((u.number?, u.ticket_sent_ms?, u.ticket_recv_ms?)))
            .collect();
        // Scanning numbers from the back, keep the earliest "received" among later numbers:
        // a user whose request was sent after that is an overtake.
        v.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
        let mut min_recv_later = u64::MAX;
        for (_, sent, recv) in v {
            if sent > min_recv_later {
                count += 1;
            }
            min_recv_later = min_recv_later.min(recv);
        }
    }
    count
}

/// The wait estimate against the wait.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EstimateStats {
    /// Users compared (admitted after waiting at least `MIN_WAIT_S`).
    pub compared: u64,
    /// Median of |estimate − actual| / actual, in percent.
    pub median_abs_error_pct: Option<f64>,
    /// 90th percentile of the same.
    pub p90_abs_error_pct: Option<f64>,
    /// Median of |estimate − actual|, in seconds.
    pub median_abs_error_s: Option<f64>,
    /// Median of (estimate − actual) / actual, in percent (positive = pessimistic).
    pub median_bias_pct: Option<f64>,
    /// (estimated s, actual s) pairs, for the plot (at most `MAX_POINTS`).
    pub points: Vec<(f64, f64)>,
}

/// Shorter waits are left out: a 1 s error on a 2 s wait says little.
pub const MIN_WAIT_S: f64 = 5.0;
const MAX_POINTS: usize = 3000;

fn median(mut v: Vec<f64>) -> Option<f64> {
    quantile(&mut v, 0.5)
}

fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Compares each user's first estimate with the wait that followed it.
pub fn estimate_errors(users: &[UserLog]) -> EstimateStats {
    let pairs: Vec<(f64, f64)> = users
        .iter()
        .filter_map(|u| {
            if u.missed_turn {
                return None;
            }
            let (at, est) = u.estimate?;
            let actual = u.admitted_ms?.checked_sub(at)? as f64 / 1000.0;
            (actual >= MIN_WAIT_S).then_some((est as f64, actual))
        })
        .collect();
    let mut rel: Vec<f64> = pairs
        .iter()
        .map(|(e, a)| (e - a).abs() / a * 100.0)
        .collect();
    let abs: Vec<f64> = pairs.iter().map(|(e, a)| (e - a).abs()).collect();
    let bias: Vec<f64> = pairs.iter().map(|(e, a)| (e - a) / a * 100.0).collect();
    let step = (pairs.len() / MAX_POINTS).max(1);
    EstimateStats {
        compared: pairs.len() as u64,
        median_abs_error_pct: quantile(&mut rel, 0.5),
        p90_abs_error_pct: quantile(&mut rel, 0.9),
        median_abs_error_s: median(abs),
        median_bias_pct: median(bias),
        points: pairs.iter().step_by(step).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(cohort: u8, number: u64, ticket: (u64, u64), waits: &[u64], adm: u64) -> UserLog {
        UserLog {
            cohort,
            ticket_sent_ms: Some(ticket.0),
            ticket_recv_ms: Some(ticket.1),
            waits: waits.iter().map(|&t| (t, number)).collect(),
            admitted_ms: Some(adm),
            number: Some(number),
            ..UserLog::default()
        }
    }

    #[test]
    fn fifo_admissions_have_no_inversions() {
        let users = vec![
            waiting(0, 1, (0, 1), &[10, 100], 150),
            waiting(0, 2, (2, 3), &[10, 100, 160], 200),
            waiting(0, 3, (4, 5), &[10, 210], 300),
        ];
        let inv = admission_inversions(&users);
        assert_eq!((inv.answers, inv.users, inv.checked), (0, 0, 7));
        assert_eq!(arrival_overtakes(&users), 0);
    }

    #[test]
    fn a_later_number_let_in_first_is_an_inversion() {
        let users = vec![
            // Number 1 still told to wait at 160, after number 2 was let in at 150.
            waiting(0, 1, (0, 1), &[10, 160], 300),
            waiting(0, 2, (2, 3), &[10], 150),
            // Another cohort's lane is independent.
            waiting(1, 0, (0, 1), &[200], 400),
        ];
        let inv = admission_inversions(&users);
        assert_eq!((inv.answers, inv.users), (1, 1));
    }

    #[test]
    fn a_later_arrival_walking_straight_in_is_an_inversion() {
        let mut direct = UserLog {
            first_gated_sent_ms: Some(50),
            admitted_ms: Some(55),
            direct: true,
            ..UserLog::default()
        };
        let users = vec![waiting(0, 1, (0, 1), &[10, 60], 300), direct.clone()];
        assert_eq!(admission_inversions(&users).answers, 1);
        // Arrived before the waiting user took a ticket: not an inversion.
        direct.first_gated_sent_ms = Some(0);
        let users = vec![waiting(0, 1, (1, 2), &[10, 60], 300), direct];
        assert_eq!(admission_inversions(&users).answers, 0);
    }

    #[test]
    fn overtakes_compare_numbers_with_arrival() {
        // User b asked (sent 20) after a already held a ticket (received 10) but got number 1.
        let a = waiting(0, 2, (0, 10), &[], 100);
        let b = waiting(0, 1, (20, 25), &[], 90);
        assert_eq!(arrival_overtakes(&[a.clone(), b.clone()]), 1);
        // Concurrent requests may come back in either order.
        let b2 = waiting(0, 1, (5, 25), &[], 90);
        assert_eq!(arrival_overtakes(&[a.clone(), b2]), 0);
        // A drawn order is not checked.
        let mut b3 = b;
        b3.drawn = true;
        assert_eq!(arrival_overtakes(&[a, b3]), 0);
    }

    #[test]
    fn estimate_error_is_relative_and_skips_short_waits() {
        let u = |est, at, adm| UserLog {
            estimate: Some((at, est)),
            admitted_ms: Some(adm),
            ..UserLog::default()
        };
        let users = vec![
            u(10, 0, 10_000), // exact
            u(12, 0, 10_000), // +20%
            u(8, 0, 10_000),  // -20%
            u(1, 0, 2_000),   // 2 s wait: left out
            u(30, 0, 20_000), // +50%
        ];
        let s = estimate_errors(&users);
        assert_eq!(s.compared, 4);
        assert_eq!(s.median_abs_error_pct, Some(20.0));
        assert_eq!(s.median_abs_error_s, Some(2.0));
        assert_eq!(s.points.len(), 4);
        // Someone who missed their turn waited for their own absence too: left out.
        let mut away = u(10, 0, 60_000);
        away.missed_turn = true;
        let mut with_away = users.clone();
        with_away.push(away);
        assert_eq!(estimate_errors(&with_away).compared, 4);
    }
}

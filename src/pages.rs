//! The pages millions of citizens see on claim day, and their JSON twin for the mobile app and
//! intermediaries' software.
//!
//! Two pages: the **queue** (waiting, or pre-queued before opening) and **closed** (this cohort's
//! window is shut; when it opens next). Both are plain HTML in Italian or English (cookie
//! `anticamera_lang` set by the language switch, else `Accept-Language`, else Italian), a few KB,
//! no framework and no external resource. The queue page works without JavaScript (a
//! `<meta http-equiv="refresh">` inside `<noscript>`) and better with it (it polls the JSON
//! status endpoint and updates position and wait in place, then enters when admitted).
//!
//! ## Templates
//! Operators can replace either page (`waiting_room.templates = "dir"` with `queue.html` and/or
//! `closed.html`). A template is HTML with `{{name}}` placeholders; every value is HTML-escaped.
//! An unknown placeholder is an error naming the file and the placeholder.
//!
//! | placeholder | queue | closed | value |
//! |---|---|---|---|
//! | `lang` | ✓ | ✓ | `it` or `en` |
//! | `title` | ✓ | ✓ | page title (queue: includes the position) |
//! | `heading` | ✓ | ✓ | the `<h1>` text |
//! | `gate_label` | ✓ | ✓ | the service's name |
//! | `lead` | ✓ | ✓ | the main sentence (where you are / when it opens) |
//! | `position_label` | ✓ | | "Your place in line" |
//! | `position` | ✓ | | 1-based place |
//! | `ahead_text` | ✓ | | "41 people ahead of you" |
//! | `wait_text` | ✓ | | "Estimated wait: about 3 minutes" |
//! | `no_rush` | ✓ | | there is no advantage in rushing; the place is kept on reload |
//! | `refresh` | ✓ | ✓ | seconds between refreshes (meta refresh and polling) |
//! | `order_at_opening` | ✓ | | before opening: `random` or `arrival` (how the line is ordered at opening); empty otherwise |
//! | `status_url` | ✓ | | the JSON status endpoint |
//! | `page_url` | ✓ | ✓ | the page the user asked for (entered when admitted) |
//! | `switch_url` | ✓ | ✓ | the language switch link |
//! | `switch_label` | ✓ | ✓ | "English" / "Italiano" |
//! | `info_text` | | ✓ | informational pages remain available |
//! | `home_label` | | ✓ | link text to the home page |
//! | `js_position` etc. | ✓ | | localized strings for the script: `js_ahead_one`, `js_ahead_many`, `js_entering` |

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use chrono_tz::Tz;
use http::header::{HeaderMap, ACCEPT_LANGUAGE};

use crate::schedule::{format_local, Lang as DateLang};
use crate::util::cookie::cookie_value;
use crate::util::escape::html_escape;

/// Cookie holding the chosen language.
pub const LANG_COOKIE: &str = "anticamera_lang";
/// Path prefix of anticamera's own endpoints (status poll, language switch).
pub const OWN_PREFIX: &str = "/.anticamera";

/// Language of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Italiano.
    It,
    /// English.
    En,
}

impl Lang {
    /// `it` or `en`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    /// The other language (for the switch).
    pub fn other(self) -> Lang {
        match self {
            Lang::It => Lang::En,
            Lang::En => Lang::It,
        }
    }

    /// Parses `it` / `en`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "it" => Some(Lang::It),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    fn dates(self) -> DateLang {
        match self {
            Lang::It => DateLang::It,
            Lang::En => DateLang::En,
        }
    }
}

/// The page language: the switch's cookie, else the best of it/en in `Accept-Language`
/// (q-values honoured), else Italian.
pub fn negotiate_lang(headers: &HeaderMap) -> Lang {
    if let Some(l) = cookie_value(headers, LANG_COOKIE).and_then(Lang::parse) {
        return l;
    }
    let mut best: Option<(f32, Lang)> = None;
    for v in headers
        .get_all(ACCEPT_LANGUAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "it" || tag.starts_with("it-") {
                Lang::It
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
    }
    best.map(|(_, l)| l).unwrap_or(Lang::It)
}

/// Where a waiting user stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    /// In line.
    Waiting,
    /// In line before the service opens.
    PreQueue,
    /// It is their turn (status poll only).
    Admitted,
}

impl QueueState {
    fn as_str(self) -> &'static str {
        match self {
            QueueState::Waiting => "waiting",
            QueueState::PreQueue => "prequeue",
            QueueState::Admitted => "admitted",
        }
    }
}

/// What the queue page shows.
pub struct QueueView<'a> {
    /// Language.
    pub lang: Lang,
    /// Gate name (JSON).
    pub gate: &'a str,
    /// Human title of the service.
    pub gate_label: &'a str,
    /// Waiting, pre-queued or admitted.
    pub state: QueueState,
    /// 1-based place in line.
    pub position: u64,
    /// People ahead.
    pub ahead: u64,
    /// Estimated wait, when known.
    pub estimated_wait: Option<Duration>,
    /// Advised seconds before the next refresh or poll.
    pub refresh_secs: u32,
    /// How long the next status poll may be held (0 = an ordinary poll).
    pub long_poll_secs: u32,
    /// The place in the admission order, when known.
    pub number: Option<u64>,
    /// Their turn came while they were away: waiting in the late line for the next free place
    /// (`ahead` counts other late arrivals).
    pub missed_turn: bool,
    /// Pre-queue: when the service opens.
    pub opens_at: Option<DateTime<Tz>>,
    /// Pre-queue: the order is drawn at opening.
    pub prequeue_random: bool,
    /// JSON status endpoint.
    pub status_url: &'a str,
    /// The page the user asked for.
    pub page_url: &'a str,
}

/// What the closed page shows.
pub struct ClosedView<'a> {
    /// Language.
    pub lang: Lang,
    /// Gate name (JSON).
    pub gate: &'a str,
    /// Human title of the service.
    pub gate_label: &'a str,
    /// The user's cohort.
    pub cohort: &'a str,
    /// Next opening for this cohort, if any.
    pub opens_at: Option<DateTime<Tz>>,
    /// Seconds until it is worth trying again.
    pub retry_after_secs: u32,
    /// The page the user asked for.
    pub page_url: &'a str,
}

/// A template that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A placeholder the page does not provide, or an unclosed `{{`.
    #[error("{file}: {reason}")]
    Syntax {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Var(&'static str),
}

#[derive(Debug, Clone)]
struct Template(Vec<Seg>);

const QUEUE_VARS: &[&str] = &[
    "lang",
    "title",
    "heading",
    "gate_label",
    "lead",
    "position_label",
    "position",
    "ahead_text",
    "wait_text",
    "no_rush",
    "refresh",
    "long_poll",
    "order_at_opening",
    "status_url",
    "page_url",
    "switch_url",
    "switch_label",
    "js_ahead_one",
    "js_ahead_many",
    "js_entering",
    "js_wait_prefix",
];
const CLOSED_VARS: &[&str] = &[
    "lang",
    "title",
    "heading",
    "gate_label",
    "lead",
    "refresh",
    "page_url",
    "switch_url",
    "switch_label",
    "info_text",
    "home_label",
];

impl Template {
    fn parse(file: &str, text: &str, vars: &[&'static str]) -> Result<Template, TemplateError> {
        let mut segs = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("{{") {
            segs.push(Seg::Lit(rest[..i].to_string()));
            let after = &rest[i + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError::Syntax {
                file: file.into(),
                reason: "unclosed {{".into(),
            })?;
            let name = after[..end].trim();
            let var = vars
                .iter()
                .find(|v| **v == name)
                .ok_or_else(|| TemplateError::Syntax {
                    file: file.into(),
                    reason: format!(
                        "unknown placeholder {{{{{name}}}}}; known: {}",
                        vars.join(", ")
                    ),
                })?;
            segs.push(Seg::Var(var));
            rest = &after[end + 2..];
        }
        segs.push(Seg::Lit(rest.to_string()));
        Ok(Template(segs))
    }

    fn render(&self, value: impl Fn(&str) -> Cow<'static, str>) -> String {
        let mut out = String::with_capacity(6 * 1024);
        for s in &self.0 {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Var(v) => out.push_str(&html_escape(&value(v))),
            }
        }
        out
    }
}

/// The two page templates.
#[derive(Debug, Clone)]
pub struct Templates {
    queue: Template,
    closed: Template,
}

const QUEUE_HTML: &str = include_str!("../templates/queue.html");
const CLOSED_HTML: &str = include_str!("../templates/closed.html");

impl Templates {
    /// The built-in pages.
    pub fn builtin() -> Templates {
        // The built-in templates are tested to parse; fall back to an empty page rather than
        // panic if someone breaks them.
        Templates {
            queue: Template::parse("queue.html", QUEUE_HTML, QUEUE_VARS)
                .unwrap_or(Template(vec![Seg::Var("lead")])),
            closed: Template::parse("closed.html", CLOSED_HTML, CLOSED_VARS)
                .unwrap_or(Template(vec![Seg::Var("lead")])),
        }
    }

    /// Operator templates from `dir` (`queue.html`, `closed.html`); missing ones are built in.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let mut t = Templates::builtin();
        for (name, vars, slot) in [
            ("queue.html", QUEUE_VARS, &mut t.queue),
            ("closed.html", CLOSED_VARS, &mut t.closed),
        ] {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => *slot = Template::parse(&path.display().to_string(), &text, vars)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TemplateError::Read {
                        file: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(t)
    }

    /// The queue page.
    pub fn render_queue(&self, v: &QueueView) -> String {
        let t = texts(v.lang);
        let switch_url = switch_url(v.lang, v.page_url);
        self.queue.render(|name| match name {
            "lang" => v.lang.code().into(),
            "title" => format!("{} {} – {}", t.position_label, v.position, v.gate_label).into(),
            "heading" => t.queue_heading.into(),
            "gate_label" => v.gate_label.to_string().into(),
            "lead" => queue_lead(v).into(),
            "position_label" => t.position_label.into(),
            "position" => v.position.to_string().into(),
            "ahead_text" => ahead_text(v.lang, v.ahead).into(),
            "wait_text" => wait_text(v.lang, v.estimated_wait, v.state).into(),
            "no_rush" => t.no_rush.into(),
            "refresh" => v.refresh_secs.to_string().into(),
            "long_poll" => v.long_poll_secs.to_string().into(),
            "order_at_opening" => order_at_opening(v).unwrap_or("").into(),
            "status_url" => v.status_url.to_string().into(),
            "page_url" => v.page_url.to_string().into(),
            "switch_url" => switch_url.clone().into(),
            "switch_label" => t.switch_label.into(),
            "js_ahead_one" => ahead_text(v.lang, 1).into(),
            "js_ahead_many" => t.ahead_many.into(),
            "js_entering" => t.entering.into(),
            "js_wait_prefix" => t.wait_prefix.into(),
            _ => "".into(),
        })
    }

    /// The closed page.
    pub fn render_closed(&self, v: &ClosedView) -> String {
        let t = texts(v.lang);
        let switch_url = switch_url(v.lang, v.page_url);
        self.closed.render(|name| match name {
            "lang" => v.lang.code().into(),
            "title" => format!("{} – {}", t.closed_heading, v.gate_label).into(),
            "heading" => t.closed_heading.into(),
            "gate_label" => v.gate_label.to_string().into(),
            "lead" => closed_lead(v).into(),
            "refresh" => v.retry_after_secs.clamp(60, 3600).to_string().into(),
            "page_url" => v.page_url.to_string().into(),
            "switch_url" => switch_url.clone().into(),
            "switch_label" => t.switch_label.into(),
            "info_text" => t.info_open.into(),
            "home_label" => t.home.into(),
            _ => "".into(),
        })
    }
}

fn switch_url(lang: Lang, page_url: &str) -> String {
    format!(
        "{OWN_PREFIX}/lang/{}?return={}",
        lang.other().code(),
        url_encode(page_url)
    )
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Texts {
    queue_heading: &'static str,
    closed_heading: &'static str,
    position_label: &'static str,
    no_rush: &'static str,
    switch_label: &'static str,
    ahead_many: &'static str,
    entering: &'static str,
    wait_prefix: &'static str,
    info_open: &'static str,
    home: &'static str,
}

fn texts(lang: Lang) -> &'static Texts {
    const IT: Texts = Texts {
        queue_heading: "Sei in fila",
        closed_heading: "Servizio non disponibile in questo orario",
        position_label: "Il tuo posto in fila",
        no_rush: "Non c'è alcun vantaggio ad affrettarsi: il tuo posto in fila è conservato anche se ricarichi la pagina. Questa pagina si aggiorna da sola.",
        switch_label: "English",
        ahead_many: "persone prima di te",
        entering: "È il tuo turno: stai entrando…",
        wait_prefix: "Attesa stimata:",
        info_open: "Le pagine informative del sito restano sempre disponibili.",
        home: "Vai alle pagine informative",
    };
    const EN: Texts = Texts {
        queue_heading: "You are in line",
        closed_heading: "This service is not available at this time",
        position_label: "Your place in line",
        no_rush: "There is no advantage in rushing: your place in line is kept even if you reload the page. This page updates by itself.",
        switch_label: "Italiano",
        ahead_many: "people ahead of you",
        entering: "It is your turn: entering…",
        wait_prefix: "Estimated wait:",
        info_open: "The site's informational pages remain available at any time.",
        home: "Go to the informational pages",
    };
    match lang {
        Lang::It => &IT,
        Lang::En => &EN,
    }
}

fn ahead_text(lang: Lang, ahead: u64) -> String {
    match (lang, ahead) {
        (Lang::It, 0) => "Nessuno prima di te: tocca a te a breve.".into(),
        (Lang::It, 1) => "1 persona prima di te".into(),
        (Lang::It, n) => format!("{n} persone prima di te"),
        (Lang::En, 0) => "Nobody ahead of you: your turn is next.".into(),
        (Lang::En, 1) => "1 person ahead of you".into(),
        (Lang::En, n) => format!("{n} people ahead of you"),
    }
}

/// The wait, rounded up (never promise less than the estimate).
fn wait_text(lang: Lang, wait: Option<Duration>, state: QueueState) -> String {
    let prefix = texts(lang).wait_prefix;
    if state == QueueState::PreQueue {
        return match lang {
            Lang::It => format!("{prefix} sarà calcolata all'apertura"),
            Lang::En => format!("{prefix} calculated when the service opens"),
        };
    }
    let Some(w) = wait else {
        return match lang {
            Lang::It => format!("{prefix} in calcolo"),
            Lang::En => format!("{prefix} being estimated"),
        };
    };
    format!("{prefix} {}", human_wait(lang, w))
}

/// "meno di un minuto", "circa 3 minuti", "circa 2 ore e 5 minuti" (rounded up).
pub fn human_wait(lang: Lang, w: Duration) -> String {
    let mins = w.as_secs().div_ceil(60);
    match (lang, mins) {
        (Lang::It, 0 | 1) if w.as_secs() < 60 => "meno di un minuto".into(),
        (Lang::En, 0 | 1) if w.as_secs() < 60 => "less than a minute".into(),
        (Lang::It, 1) => "circa 1 minuto".into(),
        (Lang::En, 1) => "about 1 minute".into(),
        (Lang::It, m) if m <= 90 => format!("circa {m} minuti"),
        (Lang::En, m) if m <= 90 => format!("about {m} minutes"),
        (Lang::It, m) => format!("circa {} ore e {} minuti", m / 60, m % 60),
        (Lang::En, m) => format!("about {} hours {} minutes", m / 60, m % 60),
    }
}

fn day_word(lang: Lang, at: &DateTime<Tz>, now: &DateTime<Tz>) -> Option<&'static str> {
    let d = at.date_naive();
    let today = now.date_naive();
    if d == today {
        Some(if lang == Lang::It { "oggi" } else { "today" })
    } else if Some(d) == today.succ_opt() {
        Some(if lang == Lang::It {
            "domani"
        } else {
            "tomorrow"
        })
    } else {
        None
    }
}

/// "alle 16:00 di oggi", "at 16:00 tomorrow", else the full local date.
fn when(lang: Lang, at: &DateTime<Tz>) -> String {
    let now = chrono::Utc::now().with_timezone(&at.timezone());
    let hm = at.format("%H:%M").to_string();
    match (lang, day_word(lang, at, &now)) {
        (Lang::It, Some(d)) => format!("alle {hm} di {d}"),
        (Lang::En, Some(d)) => format!("at {hm} {d}"),
        (Lang::It, None) => {
            format_local(at.with_timezone(&chrono::Utc), at.timezone(), lang.dates())
        }
        (Lang::En, None) => format!(
            "on {}",
            format_local(at.with_timezone(&chrono::Utc), at.timezone(), lang.dates())
        ),
    }
}

fn queue_lead(v: &QueueView) -> String {
    match (v.state, v.lang) {
        (QueueState::PreQueue, lang) => {
            let at = v
                .opens_at
                .map(|t| when(lang, &t))
                .unwrap_or_default();
            match (lang, v.prequeue_random) {
                (Lang::It, true) => format!("Il servizio apre {at}. Sei in fila: all'apertura l'ordine di ingresso verrà estratto a sorte tra chi è già in attesa, quindi non serve arrivare per primi."),
                (Lang::It, false) => format!("Il servizio apre {at}. Sei in fila: all'apertura si entra nell'ordine di arrivo."),
                (Lang::En, true) => format!("The service opens {at}. You are in line: at opening, the order of entry will be drawn at random among everyone already waiting, so there is no need to arrive first."),
                (Lang::En, false) => format!("The service opens {at}. You are in line: at opening, people enter in order of arrival."),
            }
        }
        (QueueState::Admitted, Lang::It) => texts(Lang::It).entering.into(),
        (QueueState::Admitted, Lang::En) => texts(Lang::En).entering.into(),
        (QueueState::Waiting, Lang::It) if v.missed_turn => "Il tuo turno è arrivato mentre non eri collegato. Non perdi il posto: entri al prossimo posto che si libera, prima di chi non è ancora stato chiamato.".into(),
        (QueueState::Waiting, Lang::En) if v.missed_turn => "Your turn came while you were away. You keep your place: you will be let in at the next place that frees up, before anyone not yet called.".into(),
        (QueueState::Waiting, Lang::It) => "Il servizio è molto richiesto in questo momento. Ti faremo entrare appena si libera un posto, nell'ordine in cui siete arrivati.".into(),
        (QueueState::Waiting, Lang::En) => "The service is in high demand right now. You will be let in as soon as a place frees up, in the order people arrived.".into(),
    }
}

fn closed_lead(v: &ClosedView) -> String {
    let cohort = cohort_label(v.lang, v.cohort);
    match (v.lang, &v.opens_at) {
        (Lang::It, Some(at)) => format!(
            "In questa fascia oraria il servizio non è disponibile per {cohort}. Riapre {}.",
            when(Lang::It, at)
        ),
        (Lang::En, Some(at)) => format!(
            "At this time the service is not available to {cohort}. It opens again {}.",
            when(Lang::En, at)
        ),
        (Lang::It, None) => {
            format!("Il servizio non è disponibile per {cohort} e non ha aperture programmate.")
        }
        (Lang::En, None) => {
            format!("The service is not available to {cohort} and has no scheduled opening.")
        }
    }
}

fn cohort_label(lang: Lang, cohort: &str) -> String {
    match (lang, cohort) {
        (Lang::It, "citizens") => "i cittadini".into(),
        (Lang::It, "intermediaries") => "gli intermediari (patronati, CAF, professionisti)".into(),
        (Lang::En, "intermediaries") => "intermediaries (patronati, CAF, professionals)".into(),
        (Lang::It, c) => format!("il gruppo «{c}»"),
        (Lang::En, c) => c.to_string(),
    }
}

/// Before opening: how those already waiting are ordered at opening.
fn order_at_opening(v: &QueueView) -> Option<&'static str> {
    (v.state == QueueState::PreQueue).then_some(if v.prequeue_random {
        "random"
    } else {
        "arrival"
    })
}

/// The queue answer as JSON (schema: `docs/queue-status.schema.json`).
pub fn queue_json(v: &QueueView) -> String {
    let admitted = v.state == QueueState::Admitted;
    serde_json::json!({
        "anticamera": 1,
        "state": v.state.as_str(),
        "gate": v.gate,
        "lang": v.lang.code(),
        "position": if admitted { None } else { Some(v.position) },
        "ahead": if admitted { None } else { Some(v.ahead) },
        "estimated_wait_seconds": if admitted { Some(0) } else { v.estimated_wait.map(|w| w.as_secs()) },
        "retry_after_seconds": v.refresh_secs,
        "long_poll_seconds": v.long_poll_secs,
        "number": v.number,
        "missed_turn": v.missed_turn,
        "opens_at": v.opens_at.map(|t| t.to_rfc3339()),
        "order_at_opening": order_at_opening(v),
        "cohort": serde_json::Value::Null,
        "message": queue_lead(v),
        "ahead_text": ahead_text(v.lang, v.ahead),
        "wait_text": wait_text(v.lang, v.estimated_wait, v.state),
    })
    .to_string()
}

/// The closed answer as JSON (schema: `docs/queue-status.schema.json`).
pub fn closed_json(v: &ClosedView) -> String {
    serde_json::json!({
        "anticamera": 1,
        "state": "closed",
        "gate": v.gate,
        "lang": v.lang.code(),
        "position": null,
        "ahead": null,
        "estimated_wait_seconds": null,
        "retry_after_seconds": v.retry_after_secs,
        "long_poll_seconds": 0,
        "number": null,
        "opens_at": v.opens_at.map(|t| t.to_rfc3339()),
        "order_at_opening": null,
        "cohort": v.cohort,
        "message": closed_lead(v),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn view(lang: Lang) -> QueueView<'static> {
        QueueView {
            lang,
            gate: "claims",
            gate_label: "Domanda <bonus> 600 euro",
            state: QueueState::Waiting,
            position: 42,
            ahead: 41,
            estimated_wait: Some(Duration::from_secs(121)),
            refresh_secs: 5,
            long_poll_secs: 0,
            number: Some(1041),
            missed_turn: false,
            opens_at: None,
            prequeue_random: false,
            status_url: "/.anticamera/status?gate=claims",
            page_url: "/claim?x=1&y=2",
        }
    }

    #[test]
    fn language_negotiation() {
        assert_eq!(negotiate_lang(&hm(&[])), Lang::It);
        assert_eq!(
            negotiate_lang(&hm(&[("accept-language", "en-GB,en;q=0.9")])),
            Lang::En
        );
        assert_eq!(
            negotiate_lang(&hm(&[("accept-language", "en;q=0.5, it;q=0.8")])),
            Lang::It
        );
        assert_eq!(
            negotiate_lang(&hm(&[("accept-language", "de, fr")])),
            Lang::It
        );
        assert_eq!(
            negotiate_lang(&hm(&[
                ("accept-language", "en"),
                ("cookie", "anticamera_lang=it")
            ])),
            Lang::It
        );
    }

    #[test]
    fn queue_page_is_light_accessible_and_escaped() {
        let t = Templates::builtin();
        for lang in [Lang::It, Lang::En] {
            let html = t.render_queue(&view(lang));
            assert!(html.len() < 8 * 1024, "{} bytes", html.len());
            assert!(html.contains(&format!("<html lang=\"{}\"", lang.code())));
            assert!(html.contains("role=\"status\""));
            assert!(html.contains("aria-live=\"polite\""));
            assert!(
                html.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>")
            );
            assert!(html.contains("data-anticamera=\"queue\""));
            assert!(html.contains(">42<"));
            assert!(html.contains("Domanda &lt;bonus&gt; 600 euro"), "escaped");
            assert!(!html.contains("<bonus>"));
            assert!(html.contains("/.anticamera/lang/"));
            assert!(html.matches("<h1").count() == 1);
            assert!(
                !html.contains("http://") && !html.contains("https://"),
                "no external resource"
            );
        }
        let it = t.render_queue(&view(Lang::It));
        assert!(it.contains("Non c&#39;è alcun vantaggio ad affrettarsi"));
        assert!(
            it.contains("circa 3 minuti"),
            "121 s rounds up to 3 minutes"
        );
        let en = t.render_queue(&view(Lang::En));
        assert!(en.contains("41 people ahead of you"));
    }

    #[test]
    fn waits_are_rounded_up_honestly() {
        assert_eq!(
            human_wait(Lang::En, Duration::from_secs(30)),
            "less than a minute"
        );
        assert_eq!(
            human_wait(Lang::En, Duration::from_secs(60)),
            "about 1 minute"
        );
        assert_eq!(
            human_wait(Lang::En, Duration::from_secs(61)),
            "about 2 minutes"
        );
        assert_eq!(
            human_wait(Lang::It, Duration::from_secs(90 * 60)),
            "circa 90 minuti"
        );
        assert_eq!(
            human_wait(Lang::It, Duration::from_secs(125 * 60)),
            "circa 2 ore e 5 minuti"
        );
    }

    #[test]
    fn closed_page_says_when_it_opens_in_local_time() {
        let t = Templates::builtin();
        let at = chrono_tz::Europe::Rome
            .with_ymd_and_hms(2030, 3, 12, 16, 0, 0)
            .unwrap();
        let v = ClosedView {
            lang: Lang::It,
            gate: "claims",
            gate_label: "Domanda",
            cohort: "intermediaries",
            opens_at: Some(at),
            retry_after_secs: 3600,
            page_url: "/claim",
        };
        let html = t.render_closed(&v);
        assert!(html.contains("16:00"), "{html}");
        assert!(html.contains("martedì 12 marzo 2030"), "{html}");
        assert!(html.contains("pagine informative"));
        let j: serde_json::Value = serde_json::from_str(&closed_json(&v)).unwrap();
        assert_eq!(j["state"], "closed");
        assert_eq!(j["opens_at"], "2030-03-12T16:00:00+01:00");
        assert_eq!(j["cohort"], "intermediaries");
    }

    #[test]
    fn json_follows_the_schema_fields() {
        let j: serde_json::Value = serde_json::from_str(&queue_json(&view(Lang::En))).unwrap();
        assert_eq!(j["anticamera"], 1);
        assert_eq!(j["state"], "waiting");
        assert_eq!(j["position"], 42);
        assert_eq!(j["estimated_wait_seconds"], 121);
        assert!(j["order_at_opening"].is_null());
        let mut v = view(Lang::En);
        v.state = QueueState::PreQueue;
        v.prequeue_random = true;
        let j: serde_json::Value = serde_json::from_str(&queue_json(&v)).unwrap();
        assert_eq!(j["order_at_opening"], "random");
    }

    #[test]
    fn operator_templates_are_checked() {
        let dir = std::env::temp_dir().join(format!("ac-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("queue.html"), "<p>{{position}} {{nonsense}}</p>").unwrap();
        let e = Templates::load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("queue.html") && e.contains("{{nonsense}}"),
            "{e}"
        );
        std::fs::write(dir.join("queue.html"), "<p>Posto {{ position }}</p>").unwrap();
        let t = Templates::load(&dir).unwrap();
        assert_eq!(t.render_queue(&view(Lang::It)), "<p>Posto 42</p>");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

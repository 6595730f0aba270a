//! TEMPORARY STUB (replaced by the real pages module).
#![allow(missing_docs, dead_code)]
use std::time::Duration;
pub const LANG_COOKIE: &str = "anticamera_lang";
pub const OWN_PREFIX: &str = "/.anticamera";
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    It,
    En,
}
impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "it" => Some(Lang::It),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
}
pub fn negotiate_lang(_h: &http::HeaderMap) -> Lang {
    Lang::It
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    Waiting,
    PreQueue,
    Admitted,
}
pub struct QueueView<'a> {
    pub lang: Lang,
    pub gate: &'a str,
    pub gate_label: &'a str,
    pub state: QueueState,
    pub position: u64,
    pub ahead: u64,
    pub estimated_wait: Option<Duration>,
    pub refresh_secs: u32,
    pub opens_at: Option<chrono::DateTime<chrono_tz::Tz>>,
    pub prequeue_random: bool,
    pub status_url: &'a str,
    pub page_url: &'a str,
}
pub struct ClosedView<'a> {
    pub lang: Lang,
    pub gate: &'a str,
    pub gate_label: &'a str,
    pub cohort: &'a str,
    pub opens_at: Option<chrono::DateTime<chrono_tz::Tz>>,
    pub retry_after_secs: u32,
    pub page_url: &'a str,
}
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct TemplateError;
pub struct Templates;
impl Templates {
    pub fn builtin() -> Self {
        Templates
    }
    pub fn load(_d: &std::path::Path) -> Result<Self, TemplateError> {
        Ok(Templates)
    }
    pub fn render_queue(&self, v: &QueueView) -> String {
        format!("<main data-anticamera=\"queue\">{}</main>", v.position)
    }
    pub fn render_closed(&self, v: &ClosedView) -> String {
        format!("closed {:?}", v.opens_at)
    }
}
pub fn queue_json(v: &QueueView) -> String {
    serde_json::json!({"anticamera":1,"state": match v.state { QueueState::Waiting=>"waiting", QueueState::PreQueue=>"prequeue", QueueState::Admitted=>"admitted"},"gate":v.gate,"position":v.position,"ahead":v.ahead,"estimated_wait_seconds":v.estimated_wait.map(|d|d.as_secs()),"retry_after_seconds":v.refresh_secs,"opens_at":v.opens_at.map(|t|t.to_rfc3339())}).to_string()
}
pub fn closed_json(v: &ClosedView) -> String {
    serde_json::json!({"anticamera":1,"state":"closed","gate":v.gate,"cohort":v.cohort,"opens_at":v.opens_at.map(|t|t.to_rfc3339()),"retry_after_seconds":v.retry_after_secs}).to_string()
}

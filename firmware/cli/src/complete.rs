//! Shell completion that knows the live gateway: `tunnel show <TAB>` offers the configured
//! tunnels, `config rollback <TAB>` the stored revisions, `alarm ack <TAB>` the raised alarms.
//! The shell runs `isthmus` itself to complete (clap_complete's `COMPLETE=SHELL` protocol), and
//! the candidates below ask the daemon. A TAB must never print an error or hang the shell: an
//! unreachable daemon, a refused token or an unpinned certificate give no candidates, and each
//! request gives up after [`TIMEOUT`].

use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use isthmus_api as api;

use crate::client::{self, Client};

/// How long a TAB may wait for the daemon.
pub const TIMEOUT: Duration = Duration::from_millis(800);

/// `--endpoint`/`--token` as typed on the line being completed (the shell passes it after `--`),
/// else the environment and the settings file, as a command would use them.
fn setting(flag: &str, env: &str, file: Option<String>) -> Option<String> {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").collect();
    let typed = args.windows(2).find_map(|w| (w[0] == flag).then(|| w[1].clone())).or_else(|| {
        let prefix = format!("{flag}=");
        args.iter().find_map(|a| a.strip_prefix(&prefix).map(String::from))
    });
    typed.filter(|v| !v.is_empty()).or_else(|| std::env::var(env).ok()).or(file)
}

fn get<T: serde::de::DeserializeOwned>(path: &str) -> Option<T> {
    let file = client::file_settings().unwrap_or_default();
    let endpoint = setting("--endpoint", "ISTHMUS_ENDPOINT", file.endpoint)
        .unwrap_or_else(|| api::LOCAL_ENDPOINT.to_owned());
    let token = setting("--token", "ISTHMUS_TOKEN", file.token);
    Client::quiet(&endpoint, token, TIMEOUT)?.get(path).ok()
}

/// The configured tunnels, with their state as help.
pub fn tunnels() -> Vec<CompletionCandidate> {
    let v: Vec<api::TunnelSummary> = get("/tunnels").unwrap_or_default();
    v.into_iter()
        .map(|t| {
            let state = t.state.to_string();
            CompletionCandidate::new(t.name).help(Some(state.into()))
        })
        .collect()
}

/// The stored revisions, newest first, with their comment as help.
pub fn revisions() -> Vec<CompletionCandidate> {
    let mut v: Vec<api::Revision> = get("/config/revisions").unwrap_or_default();
    v.sort_by_key(|r| std::cmp::Reverse(r.number));
    v.into_iter()
        .map(|r| {
            let help = if r.active { format!("{} (active)", r.comment) } else { r.comment };
            CompletionCandidate::new(r.number.to_string()).help(Some(help.trim().to_owned().into()))
        })
        .collect()
}

fn raised() -> Vec<api::Alarm> {
    let v: Vec<api::Alarm> = get("/alarms").unwrap_or_default();
    v.into_iter().filter(|a| a.cleared.is_none()).collect()
}

/// The names of raised alarms (only those can be acknowledged), with their subject as help.
pub fn alarm_names() -> Vec<CompletionCandidate> {
    let mut v: Vec<CompletionCandidate> = Vec::new();
    for a in raised() {
        if !v.iter().any(|c| c.get_value() == a.name.as_str()) {
            v.push(CompletionCandidate::new(a.name).help(Some(a.subject.into())));
        }
    }
    v
}

/// The subjects of raised alarms (of the alarm named on the line, when it is), with the
/// alarm's name as help.
pub fn alarm_subjects() -> Vec<CompletionCandidate> {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").collect();
    let name = args.windows(3).find_map(|w| (w[0] == "ack").then(|| w[1].clone()));
    raised()
        .into_iter()
        .filter(|a| name.as_ref().is_none_or(|n| *n == a.name))
        .map(|a| CompletionCandidate::new(a.subject).help(Some(a.name.into())))
        .collect()
}

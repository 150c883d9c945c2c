//! Alarms: conditions from the configuration evaluated every second against live state, raised
//! after they hold for `hold`, cleared when they end, and delivered to webhooks (JSON POST with
//! retries from a bounded queue, optionally HMAC-signed) and to the log and event stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isthmus_api::{self as api, Severity};
use isthmus_config::{AlarmKind, AlarmSeverity, Config};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::events::unix_now;

/// How many notifications may wait for delivery; beyond that the oldest are dropped (counted).
const QUEUE: usize = 256;

#[derive(Clone, Debug)]
struct Target {
    name: String,
    url: String,
    retries: u32,
    timeout: Duration,
    secret: Option<String>,
}

/// One notification on its way.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Notification {
    /// `raised` or `cleared`.
    pub state: &'static str,
    /// The alarm's name.
    pub alarm: String,
    /// What it concerns, e.g. `tunnel/to-idc`.
    pub subject: String,
    /// Severity.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// The gateway that sends it.
    pub gateway: String,
}

#[derive(Default)]
struct State {
    gateway: String,
    rules: Vec<isthmus_config::Alarm>,
    targets: BTreeMap<String, Target>,
    /// When a condition started holding, per (alarm, subject).
    since: HashMap<(String, String), Instant>,
    /// Raised alarms by (alarm, subject), and recently cleared ones.
    active: BTreeMap<(String, String), api::Alarm>,
    cleared: Vec<api::Alarm>,
    /// One-shot conditions set by events, per (kind, tunnel), cleared by later events.
    latched: HashMap<(&'static str, String), String>,
    queue: Option<mpsc::Sender<(Target, Notification)>>,
    dropped: u64,
}

/// The alarm engine.
#[derive(Default)]
pub struct Alarms {
    st: Mutex<State>,
}

fn sev(s: AlarmSeverity) -> Severity {
    match s {
        AlarmSeverity::Info => Severity::Info,
        AlarmSeverity::Warning => Severity::Warning,
        AlarmSeverity::Critical => Severity::Critical,
    }
}

impl Alarms {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the alarm rules and notification targets of a new configuration.
    pub fn configure(&self, cfg: &Config) {
        let mut st = self.lock();
        st.gateway = cfg.gateway.name.clone();
        st.rules = cfg.alarms.clone();
        st.targets = cfg
            .notify
            .iter()
            .map(|n| {
                let t = Target {
                    name: n.name.clone(),
                    url: n.webhook.clone(),
                    retries: n.retries,
                    timeout: n.timeout.as_duration(),
                    secret: n
                        .secret
                        .as_ref()
                        .and_then(|s| s.resolve().ok())
                        .map(|v| v.expose().to_owned()),
                };
                (n.name.clone(), t)
            })
            .collect();
        // Alarms whose rule is gone clear.
        let names: Vec<String> = st.rules.iter().map(|r| r.name.clone()).collect();
        let gone: Vec<(String, String)> =
            st.active.keys().filter(|(a, _)| !names.contains(a)).cloned().collect();
        for k in gone {
            if let Some(mut a) = st.active.remove(&k) {
                a.cleared = Some(unix_now());
                st.cleared.push(a);
            }
        }
    }

    /// Starts delivering notifications (needs a tokio runtime).
    pub fn start_delivery(&self) {
        let (tx, mut rx) = mpsc::channel::<(Target, Notification)>(QUEUE);
        self.lock().queue = Some(tx);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder().build() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("webhook client: {e}");
                    return;
                }
            };
            while let Some((t, n)) = rx.recv().await {
                deliver(&client, &t, &n).await;
            }
        });
    }

    /// Notes an event that some alarm kinds latch on (DPD timeouts, rekey failures).
    pub fn on_event(&self, kind: &str, tunnel: &str, message: &str) {
        let mut st = self.lock();
        let t = tunnel.to_owned();
        match kind {
            "tunnel-down"
                if message.contains("DPD")
                    || message.contains("dead")
                    || message.contains("liveness") =>
            {
                st.latched.insert(("dpd-timeout", t), message.to_owned());
            }
            "negotiation-failed" if message.contains("CREATE_CHILD_SA") => {
                st.latched.insert(("rekey-failure", t), message.to_owned());
            }
            "tunnel-up" => {
                st.latched.remove(&("dpd-timeout", t));
            }
            "child-rekeyed" | "ike-rekeyed" => {
                st.latched.remove(&("rekey-failure", t));
            }
            "plugin-fault" => {
                st.latched.insert(("plugin-fault", t), message.to_owned());
            }
            _ => {}
        }
    }

    /// A commit-confirm timed out and the configuration was reverted: always worth telling.
    pub fn confirm_reverted(&self, message: &str) {
        let mut st = self.lock();
        let a = api::Alarm {
            name: "confirm-timeout".into(),
            subject: "config".into(),
            severity: Severity::Warning,
            message: message.to_owned(),
            raised: unix_now(),
            cleared: Some(unix_now()),
        };
        let targets: Vec<Target> = st.targets.values().cloned().collect();
        let gw = st.gateway.clone();
        for t in targets {
            enqueue(&mut st, t, notification("raised", &a, &gw));
        }
        st.cleared.push(a);
    }

    /// Evaluates every rule against live state; raises and clears.
    pub fn evaluate(&self, core: &Core) {
        let Some((_, cfg)) = core.applied() else { return };
        let tunnels = futures_util::FutureExt::now_or_never(core.tunnels()).unwrap_or_default();
        let mut st = self.lock();
        let now = Instant::now();
        let rules = st.rules.clone();
        for r in &rules {
            let watched =
                cfg.tunnels.iter().filter(|t| r.tunnels.is_empty() || r.tunnels.contains(&t.name));
            for t in watched {
                let subject = format!("tunnel/{}", t.name);
                let summary = tunnels.iter().find(|s| s.name == t.name);
                let cond: Option<String> = match r.kind {
                    AlarmKind::TunnelDown => summary
                        .filter(|s| t.enabled && s.state != api::TunnelState::Up)
                        .map(|s| format!("tunnel {} is {:?}", t.name, s.state).to_lowercase()),
                    AlarmKind::OneWayTraffic => {
                        let (out, inn) = core.monitor.idle(&t.name);
                        match (out, inn) {
                            (Some(o), i)
                                if o < 5 && i.is_none_or(|i| i >= r.hold.as_secs().max(1)) =>
                            {
                                Some(format!(
                                    "ESP leaves through tunnel {} but nothing has come back for {} s: the peer is not sending back — check its routes and SPD",
                                    t.name,
                                    i.map(|i| i.to_string()).unwrap_or("ever".into())
                                ))
                            }
                            _ => None,
                        }
                    }
                    AlarmKind::DpdTimeout => {
                        st.latched.get(&("dpd-timeout", t.name.clone())).cloned()
                    }
                    AlarmKind::RekeyFailure => {
                        st.latched.get(&("rekey-failure", t.name.clone())).cloned()
                    }
                    AlarmKind::PluginFault => {
                        st.latched.get(&("plugin-fault", t.name.clone())).cloned()
                    }
                    // Health checks feed these; without probes they never hold.
                    AlarmKind::HealthLoss | AlarmKind::HealthLatency => None,
                };
                let key = (r.name.clone(), subject.clone());
                match cond {
                    Some(msg) => {
                        let since = *st.since.entry(key.clone()).or_insert(now);
                        if now.duration_since(since) >= r.hold.as_duration()
                            && !st.active.contains_key(&key)
                        {
                            let a = api::Alarm {
                                name: r.name.clone(),
                                subject: subject.clone(),
                                severity: sev(r.severity),
                                message: msg,
                                raised: unix_now(),
                                cleared: None,
                            };
                            core.events().emit(
                                "alarm-raised",
                                &subject,
                                a.severity,
                                format!("alarm {}: {}", a.name, a.message),
                            );
                            let gw = st.gateway.clone();
                            for n in &r.notify {
                                if let Some(t) = st.targets.get(n).cloned() {
                                    enqueue(&mut st, t, notification("raised", &a, &gw));
                                }
                            }
                            st.active.insert(key, a);
                        }
                    }
                    None => {
                        st.since.remove(&key);
                        if let Some(mut a) = st.active.remove(&key) {
                            a.cleared = Some(unix_now());
                            core.events().emit(
                                "alarm-cleared",
                                &subject,
                                Severity::Info,
                                format!("alarm {} cleared", a.name),
                            );
                            let gw = st.gateway.clone();
                            for n in &r.notify {
                                if let Some(t) = st.targets.get(n).cloned() {
                                    enqueue(&mut st, t, notification("cleared", &a, &gw));
                                }
                            }
                            st.cleared.push(a);
                            if st.cleared.len() > 100 {
                                st.cleared.remove(0);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Active alarms, then recently cleared ones.
    pub fn list(&self) -> Vec<api::Alarm> {
        let st = self.lock();
        st.active.values().cloned().chain(st.cleared.iter().rev().cloned()).collect()
    }

    /// How many alarms are raised.
    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

fn notification(state: &'static str, a: &api::Alarm, gateway: &str) -> Notification {
    Notification {
        state,
        alarm: a.name.clone(),
        subject: a.subject.clone(),
        severity: a.severity,
        message: a.message.clone(),
        time: unix_now(),
        gateway: gateway.to_owned(),
    }
}

fn enqueue(st: &mut State, t: Target, n: Notification) {
    tracing::warn!(alarm = %n.alarm, subject = %n.subject, state = n.state, target = %t.name, "{}", n.message);
    if let Some(q) = &st.queue
        && q.try_send((t, n)).is_err()
    {
        st.dropped += 1;
    }
}

async fn deliver(client: &reqwest::Client, t: &Target, n: &Notification) {
    let body = serde_json::to_vec(n).unwrap_or_default();
    let mut delay = Duration::from_millis(500);
    for attempt in 0..=t.retries {
        let mut req =
            client.post(&t.url).timeout(t.timeout).header("content-type", "application/json");
        if let Some(s) = &t.secret {
            req = req.header(
                "x-isthmus-signature",
                format!("sha256={}", hmac_sha256(s.as_bytes(), &body)),
            );
        }
        match req.body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(target = %t.name, status = %r.status(), attempt, "webhook refused the notification")
            }
            Err(e) => tracing::warn!(target = %t.name, attempt, "webhook unreachable: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    tracing::error!(target = %t.name, alarm = %n.alarm, "giving up on the notification after {} retries", t.retries);
}

/// HMAC-SHA256 (RFC 2104) as hex.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    hex::encode(outer.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_matches_rfc4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            super::hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

//! Alarm delivery: webhooks (JSON POST with retries, optionally HMAC-signed, RFC 2104) fed from
//! the alarm engine's bounded queue ([`crate::obs::alarms`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::{self as api, Severity};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::obs::events::unix_now;

#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) retries: u32,
    pub(crate) timeout: Duration,
    pub(crate) secret: Option<String>,
    /// Trusted for this target besides the built-in roots (`notify.ca`).
    pub(crate) ca: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.len())
            .finish()
    }
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

pub(crate) fn notification(state: &'static str, a: &api::Alarm, gateway: &str) -> Notification {
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

/// Delivers what the alarm engine queues, until the queue closes.
pub(crate) async fn run(mut rx: mpsc::Receiver<(Target, Notification)>) {
    // One client per CA bundle: targets without one share a client.
    let mut clients: HashMap<Vec<CertificateDer<'static>>, reqwest::Client> = HashMap::new();
    while let Some((t, n)) = rx.recv().await {
        let client = match clients.get(&t.ca) {
            Some(c) => c.clone(),
            None => match webhook_client(&t.ca) {
                Ok(c) => clients.entry(t.ca.clone()).or_insert(c).clone(),
                Err(e) => {
                    tracing::error!(target = %t.name, "webhook client: {e:#}");
                    continue;
                }
            },
        };
        // Logged inside; the result is for tests.
        let _ = deliver(&client, &t, &n).await;
    }
}

/// The HTTPS client of webhooks: Mozilla's root CAs (`webpki-roots`, compiled in: the appliance
/// image carries no system CA store for `rustls-native-certs` to read) plus the target's own
/// bundle (`notify.ca`).
pub(crate) fn webhook_client(ca: &[CertificateDer<'static>]) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for c in ca {
        roots.add(c.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

/// Posts `n` to `t` with retries. The error of the last attempt names its cause (a TLS
/// failure says which) and never the URL, which may carry a token.
pub(crate) async fn deliver(
    client: &reqwest::Client,
    t: &Target,
    n: &Notification,
) -> Result<(), String> {
    let body = serde_json::to_vec(n).unwrap_or_default();
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
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
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                last = format!("webhook refused the notification: {}", r.status());
                tracing::warn!(target = %t.name, status = %r.status(), attempt, "webhook refused the notification")
            }
            Err(e) => {
                // `{:#}` walks the source chain: "error sending request: client error
                // (Connect): invalid peer certificate: UnknownIssuer".
                last = format!("webhook unreachable: {:#}", anyhow::Error::from(e.without_url()));
                tracing::warn!(target = %t.name, attempt, "{last}");
            }
        }
        if attempt < t.retries {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
    tracing::error!(target = %t.name, alarm = %n.alarm, "giving up on the notification after {} retries: {last}", t.retries);
    Err(last)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`, as hex.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length (RFC 2104 §2): `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

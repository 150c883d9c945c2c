//! Alarm delivery: webhooks (JSON POST with retries, optionally HMAC-signed, RFC 2104) fed from
//! the alarm engine's bounded queue ([`crate::obs::alarms`]).
//!
//! Every request carries `User-Agent: isthmusd/VERSION` and `X-Isthmus-Delivery: UUID`, a
//! random (v4, RFC 9562) identifier per notification that stays the same across its retries,
//! so that a receiver can drop a retry of what it already has (as GitHub's
//! `X-GitHub-Delivery`). The same identifier is the body's `id`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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

/// The `User-Agent` of webhook requests.
pub const USER_AGENT: &str = concat!("isthmusd/", env!("CARGO_PKG_VERSION"));

/// The header naming a delivery (one notification, whatever its retries).
pub const DELIVERY_HEADER: &str = "x-isthmus-delivery";

/// Deliveries per target, for `isthmus_webhook_deliveries_total`.
#[derive(Default)]
pub struct DeliveryStats {
    /// Per target: notifications delivered, and given up on after every retry.
    by_target: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl DeliveryStats {
    /// Per target name: (delivered, failed), for every target counted or `known`.
    pub fn read(&self, known: impl IntoIterator<Item = String>) -> BTreeMap<String, (u64, u64)> {
        let mut m = self.by_target.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for t in known {
            m.entry(t).or_default();
        }
        m
    }

    fn count(&self, target: &str, ok: bool) {
        let mut m = self.by_target.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(target.to_owned()).or_default();
        if ok { e.0 += 1 } else { e.1 += 1 }
    }
}

/// One notification on its way.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Notification {
    /// The delivery identifier (also the `X-Isthmus-Delivery` header): the same for every
    /// retry of this notification, different for every other.
    pub id: String,
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
    /// Why it cleared (only in a clear).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the epoch.
    pub time: u64,
    /// The gateway that sends it.
    pub gateway: String,
}

pub(crate) fn notification(state: &'static str, a: &api::Alarm, gateway: &str) -> Notification {
    Notification {
        id: uuid::Uuid::new_v4().to_string(),
        state,
        alarm: a.name.clone(),
        subject: a.subject.clone(),
        severity: a.severity,
        message: a.message.clone(),
        reason: if state == "cleared" { a.clear_reason.clone() } else { None },
        time: unix_now(),
        gateway: gateway.to_owned(),
    }
}

/// Delivers what the alarm engine queues, until the queue closes.
pub(crate) async fn run(mut rx: mpsc::Receiver<(Target, Notification)>, stats: Arc<DeliveryStats>) {
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
        // Logged inside.
        let ok = deliver(&client, &t, &n).await.is_ok();
        stats.count(&t.name, ok);
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
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).user_agent(USER_AGENT).build()?)
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
        let mut req = client
            .post(&t.url)
            .timeout(t.timeout)
            .header("content-type", "application/json")
            .header(DELIVERY_HEADER, &n.id);
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
    tracing::error!(target = %t.name, alarm = %n.alarm, delivery = %n.id, "giving up on the notification after {} retries: {last}", t.retries);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain-HTTP receiver that refuses the first request (500) and takes the others; every
    /// request's head goes to the channel.
    async fn flaky_receiver() -> (String, mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head = loop {
                    let Ok(k) = s.read(&mut chunk).await else { break String::new() };
                    if k == 0 {
                        break String::new();
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((h, b)) = text.split_once("\r\n\r\n") {
                        let len: usize = h
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if b.len() >= len {
                            break h.to_lowercase();
                        }
                    }
                };
                n += 1;
                // Before answering: once `deliver` returns, every request is in the channel.
                let _ = tx.send(head);
                let status = if n == 1 { "500 Internal Server Error" } else { "200 OK" };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (url, rx)
    }

    fn header(head: &str, name: &str) -> String {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    }

    /// Issue 18: webhook requests carry a User-Agent and a delivery ID that stays the same
    /// across the retries of one notification (so that the receiver can deduplicate) and
    /// differs between notifications.
    #[tokio::test]
    async fn webhook_requests_carry_a_user_agent_and_one_delivery_id_per_notification() {
        let (url, mut heads) = flaky_receiver().await;
        let t = Target {
            name: "ops".into(),
            url,
            retries: 2,
            timeout: Duration::from_secs(5),
            secret: None,
            ca: Vec::new(),
        };
        let a = api::Alarm {
            name: "down".into(),
            subject: "tunnel/to-idc".into(),
            severity: Severity::Major,
            message: "tunnel to-idc is down".into(),
            raised: 1,
            cleared: None,
            clear_reason: None,
            acknowledged: None,
        };
        let client = webhook_client(&[]).unwrap();
        let first = notification("raised", &a, "gw");
        deliver(&client, &t, &first).await.unwrap();
        let second = notification("raised", &a, "gw");
        deliver(&client, &t, &second).await.unwrap();
        let heads: Vec<String> = std::iter::from_fn(|| heads.try_recv().ok()).collect();
        assert_eq!(heads.len(), 3, "refused once, retried, then the second: {heads:?}");
        let ids: Vec<String> = heads.iter().map(|h| header(h, DELIVERY_HEADER)).collect();
        assert_eq!(ids[0], ids[1], "a retry is the same delivery");
        assert_ne!(ids[1], ids[2], "another notification is another delivery");
        assert_eq!((ids[0].as_str(), ids[2].as_str()), (first.id.as_str(), second.id.as_str()));
        for h in &heads {
            assert_eq!(header(h, "user-agent"), USER_AGENT);
        }
        assert!(USER_AGENT.starts_with("isthmusd/"));
    }
}

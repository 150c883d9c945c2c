//! The CLI's HTTP client: endpoint and token resolution, TLS pinned on first use (like ssh's
//! known_hosts), and API errors turned into messages and exit codes.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use isthmus_api::ApiError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Exit codes, so that scripts can tell failures apart.
pub mod exit {
    /// Something else went wrong.
    pub const ERROR: i32 = 1;
    /// The token is missing, unknown or not allowed to do this (401/403).
    pub const AUTH: i32 = 3;
    /// The object does not exist (404).
    pub const NOT_FOUND: i32 = 4;
    /// The configuration is invalid, or the request was refused as malformed (400/422).
    pub const INVALID: i32 = 5;
    /// The daemon could not be reached, or its certificate does not match the pinned one.
    pub const UNREACHABLE: i32 = 6;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// The process exit code.
    pub code: i32,
    /// The message for stderr.
    pub message: String,
    /// Details (e.g. configuration errors with paths), one per line.
    pub details: Vec<String>,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        for d in &self.details {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

/// The CLI's settings file, `~/.config/isthmus/config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// e.g. `https://192.0.2.1:8443` or `http://127.0.0.1:8080`.
    pub endpoint: Option<String>,
    /// The bearer token.
    pub token: Option<String>,
}

fn config_dir() -> PathBuf {
    std::env::var_os("ISTHMUS_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::config_dir().map(|d| d.join("isthmus")))
        .unwrap_or_else(|| PathBuf::from(".isthmus"))
}

/// The settings file, `config.toml` in the CLI's folder.
pub fn settings_path() -> PathBuf {
    config_dir().join("config.toml")
}

/// Reads the settings file if there is one.
pub fn file_settings() -> anyhow::Result<FileSettings> {
    let p = settings_path();
    match std::fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileSettings::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// A connection to one daemon.
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    /// Where `base` came from, for the message when it cannot be reached.
    origin: String,
    token: Option<String>,
}

fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Accepts exactly the pinned certificate; on first use accepts any and records what it saw.
#[derive(Debug)]
struct Pin {
    expected: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp.clone());
        match &self.expected {
            Some(e) if *e != fp => Err(rustls::Error::General(format!(
                "certificate fingerprint {fp} does not match the pinned {e}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS that accepts only the `expected` certificate fingerprint (any, when none is pinned yet:
/// the verifier records what it saw).
fn pinning_tls(expected: Option<String>) -> anyhow::Result<(rustls::ClientConfig, Arc<Pin>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pin { expected, seen: Mutex::new(None), provider: provider.clone() });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((tls, verifier))
}

fn known_hosts() -> PathBuf {
    config_dir().join("known_hosts")
}

fn pinned(host: &str) -> Option<String> {
    let text = std::fs::read_to_string(known_hosts()).ok()?;
    text.lines().find_map(|l| {
        let (h, fp) = l.split_once(' ')?;
        (h == host).then(|| fp.trim().to_owned())
    })
}

fn pin(host: &str, fp: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let p = known_hosts();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p)?;
    writeln!(f, "{host} {fp}")?;
    Ok(())
}

impl Client {
    /// Connects to `endpoint` (`http://` only for loopback daemons, else `https://`); `origin`
    /// says where the endpoint came from (the flag, the settings file, the default).
    pub fn new(endpoint: &str, origin: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = endpoint.trim_end_matches('/').to_owned();
        let mut b = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(hostport) = base.strip_prefix("https://") {
            let hostport = hostport.split('/').next().unwrap_or(hostport).to_owned();
            let expected = pinned(&hostport);
            let (tls, verifier) = pinning_tls(expected.clone())?;
            b = b.use_preconfigured_tls(tls);
            let http = b.build()?;
            let client = Client { http, base: base.clone(), origin: origin.to_owned(), token };
            if expected.is_none() {
                // Trust on first use: one request to learn the certificate, then remember it.
                let _ = client
                    .http
                    .get(format!("{base}/openapi.json"))
                    .send()
                    .map_err(|e| unreachable(&base, origin, e))?;
                let seen = verifier.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(fp) = seen {
                    pin(&hostport, &fp)?;
                    eprintln!("isthmus: pinned {hostport} with certificate fingerprint {fp}");
                }
            }
            return Ok(client);
        } else if !base.starts_with("http://") {
            bail!(
                "endpoint `{endpoint}` must start with https:// (or http:// for a daemon on loopback)"
            );
        }
        Ok(Client { http: b.build()?, base, origin: origin.to_owned(), token })
    }

    /// A client for shell completion: each request takes at most `timeout`, and an `https://`
    /// endpoint must be pinned already (a TAB never trusts a certificate on first use, nor
    /// prints). `None` when no request could be made.
    pub fn quiet(endpoint: &str, token: Option<String>, timeout: Duration) -> Option<Client> {
        let base = endpoint.trim_end_matches('/').to_owned();
        let mut b = reqwest::blocking::Client::builder().timeout(timeout).connect_timeout(timeout);
        if let Some(hostport) = base.strip_prefix("https://") {
            let hostport = hostport.split('/').next().unwrap_or(hostport);
            let (tls, _) = pinning_tls(Some(pinned(hostport)?)).ok()?;
            b = b.use_preconfigured_tls(tls);
        } else if !base.starts_with("http://") {
            return None;
        }
        Some(Client { http: b.build().ok()?, base, origin: String::new(), token })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with('/')
            && !path.starts_with(isthmus_api::PREFIX)
            && !path.starts_with("/metrics")
        {
            format!("{}{}{}", self.base, isthmus_api::PREFIX, path)
        } else {
            format!("{}{}", self.base, path)
        }
    }

    fn auth(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET a JSON resource.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let r = self
            .auth(self.http.get(self.url(path)))
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        json(r)
    }

    /// GET a text resource.
    pub fn get_text(&self, path: &str) -> Result<String, CliError> {
        let r = self
            .auth(self.http.get(self.url(path)))
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        let r = ok(r)?;
        r.text().map_err(|e| other(e.to_string()))
    }

    /// GET a streaming resource (server-sent events) with query parameters.
    pub fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::blocking::Response, CliError> {
        let r = self
            .auth(
                self.http
                    .get(self.url(path))
                    .query(query)
                    .timeout(std::time::Duration::from_secs(365 * 86400)),
            )
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        ok(r)
    }

    /// POST JSON and read JSON back.
    pub fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let r = self
            .auth(self.http.post(self.url(path)).json(body))
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        json(r)
    }

    /// POST a JSON body and read a text answer (a generated file).
    pub fn post_text<B: serde::Serialize>(&self, path: &str, body: &B) -> Result<String, CliError> {
        let r = self
            .auth(self.http.post(self.url(path)).json(body))
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        let r = ok(r)?;
        r.text().map_err(|e| other(e.to_string()))
    }

    /// Carries out `a` through `POST /actions`, the daemon's one way in for changes, and reads
    /// its typed answer (an `api::Message` for most actions).
    pub fn act<T: serde::de::DeserializeOwned>(
        &self,
        a: &isthmus_api::Action,
    ) -> Result<T, CliError> {
        self.post("/actions", a)
    }

    /// POST raw bytes from a reader of known length, e.g. a plugin package with a progress bar.
    pub fn post_bytes<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: impl Read + Send + 'static,
        len: u64,
    ) -> Result<T, CliError> {
        let r = self
            .auth(
                self.http
                    .post(self.url(path))
                    .header("content-type", "application/octet-stream")
                    .body(reqwest::blocking::Body::sized(body, len)),
            )
            .send()
            .map_err(|e| unreachable(&self.base, &self.origin, e))?;
        json(r)
    }
}

fn other(message: String) -> CliError {
    CliError { code: exit::ERROR, message, details: vec![] }
}

/// Names the endpoint and where it came from, and the cause (not the URL of the request that
/// failed: an operator configures the endpoint, not `/openapi.json`).
fn unreachable(base: &str, origin: &str, e: reqwest::Error) -> CliError {
    let e = e.without_url();
    let mut msg = format!("cannot reach the daemon at {base} ({origin}): {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    if msg.contains("does not match the pinned") {
        msg.push_str(&format!(
            "\nIf the gateway was reinstalled, remove its line from {} and try again.",
            known_hosts().display()
        ));
    } else {
        msg.push_str(
            "\nIs isthmusd running? From another machine, give the gateway's management address: \
             --endpoint https://ADDRESS:8443 (or ISTHMUS_ENDPOINT).",
        );
    }
    CliError { code: exit::UNREACHABLE, message: msg, details: vec![] }
}

fn ok(r: reqwest::blocking::Response) -> Result<reqwest::blocking::Response, CliError> {
    let status = r.status();
    if status.is_success() {
        return Ok(r);
    }
    let text = r.text().unwrap_or_default();
    let (message, details) = match serde_json::from_str::<ApiError>(&text) {
        Ok(e) => (
            e.message,
            e.details.into_iter().map(|d| format!("{}: {}", d.path, d.message)).collect(),
        ),
        Err(_) => (format!("HTTP {status}: {text}"), vec![]),
    };
    let code = match status.as_u16() {
        401 | 403 => exit::AUTH,
        404 => exit::NOT_FOUND,
        400 | 409 | 413 | 422 => exit::INVALID,
        _ => exit::ERROR,
    };
    Err(CliError { code, message, details })
}

fn json<T: serde::de::DeserializeOwned>(r: reqwest::blocking::Response) -> Result<T, CliError> {
    let r = ok(r)?;
    r.json().map_err(|e| other(format!("unexpected response from the daemon: {e}")))
}

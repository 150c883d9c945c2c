//! `isthmus config import`: an Isthmus configuration from a strongSwan swanctl.conf
//! (`man 5 swanctl.conf`, strongSwan 5.8 and later). Sans-IO: text in (the file, the files it
//! includes through a callback, a separate secrets file, an optional base configuration),
//! the configuration's text and notes out; the CLI reads and writes the files.
//!
//! What maps to what is the table in docs/migrating.md. In short: each connection becomes a
//! `[[tunnel]]`; its children become the tunnel's `[[tunnel.spd]]` entries (one IKE SA carries
//! them all, as in strongSwan); connections to the same remote address and identity share one
//! `[[customer_gateway]]`; the PSK is the `ike-*` secret strongSwan itself would pick for the
//! two identities. Every setting that cannot be carried over is a [`Note`] naming its file,
//! line and the reason. The result is validated as a whole ([`Config::check`]); a connection the
//! validation still refuses is left out, with the validation's message as its note.
//!
//! swanctl.conf says nothing of this gateway's own interfaces: they come from a base
//! configuration (its text is kept as written, the import appended), or, without one, from
//! placeholders derived from `local_addrs` and the local traffic selectors, marked in the text
//! and named in notes.

pub mod settings;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use isthmus_ike::proposal::{EspProposal, IkeProposal};
use isthmus_tables::{PortRange, Prefix};
use toml::{Table, Value};

pub use settings::{Includer, Loc, Section, Setting, Source, SyntaxError};

use crate::types::{Dur, PeerAddress, Protocol, format_ports, parse_ports};
use crate::{Checked, Config, Errors};

/// A setting that was not carried over, or was carried over differently, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Where it is written.
    pub loc: Loc,
    /// The setting as a path, with its value unless it is a secret
    /// (`connections.rw.local.auth = pubkey`).
    pub setting: String,
    /// Why it was not carried over, and what to do instead.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.loc, self.setting, self.message)
    }
}

/// What the import was given besides the swanctl.conf.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// An Isthmus configuration whose `[gateway]` (and everything else) the imported customer
    /// gateways and tunnels are added to; its text is kept as written.
    pub base: Option<String>,
}

/// The imported configuration.
#[derive(Debug)]
pub struct Imported {
    /// The configuration's text (TOML). It holds the PSKs: write it where only root can read.
    pub text: String,
    /// The configuration, validated, with its warnings.
    pub checked: Checked,
    /// Each setting not carried over, in the order of the files.
    pub notes: Vec<Note>,
    /// The names of the imported tunnels.
    pub tunnels: Vec<String>,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file is not in swanctl.conf syntax (the message names the file and line).
    #[error("{0}")]
    Syntax(SyntaxError),
    /// The base configuration does not validate on its own.
    #[error("the base configuration is invalid:\n{0}")]
    Base(Errors),
    /// The result does not validate for a reason that no single connection explains.
    #[error("the imported configuration is invalid:\n{0}")]
    Invalid(Errors),
}

/// strongSwan's `default` IKE proposals (`proposal_create_default_aead` and
/// `proposal_create_default` in `src/libstrongswan/crypto/proposal/proposal.c`), limited to the
/// algorithms Isthmus implements: AEAD first, as strongSwan proposes them.
const DEFAULT_IKE: [&str; 2] = [
    "aes128gcm16-aes256gcm16-chacha20poly1305-prfsha256-prfsha384-prfsha512-ecp256-ecp384-ecp521-x25519-modp3072-modp4096-modp8192-modp2048",
    "aes128-aes192-aes256-sha256-sha384-sha512-ecp256-ecp384-ecp521-x25519-modp3072-modp4096-modp8192-modp2048",
];
/// strongSwan's `default` ESP proposals, likewise (without PFS: its groups are optional there).
const DEFAULT_ESP: [&str; 2] =
    ["aes128gcm16-aes256gcm16", "aes128-aes192-aes256-sha256-sha384-sha512"];

/// Imports `main` (and the files it includes, read through `include`), with PSKs from its own
/// `secrets` section and from `secrets`, if given.
pub fn import(
    main: &Source,
    secrets: Option<&Source>,
    include: &mut Includer<'_>,
    opts: &Options,
) -> Result<Imported, ImportError> {
    let mut root = settings::parse(main, include).map_err(ImportError::Syntax)?;
    if let Some(s) = secrets {
        let extra = settings::parse(s, include).map_err(ImportError::Syntax)?;
        root.merge(extra);
    }
    let base = match &opts.base {
        Some(text) => Some(Config::from_toml(text).map_err(ImportError::Base)?),
        None => None,
    };
    let mut cx = Cx { notes: Vec::new() };
    for s in &root.settings {
        cx.note(s, "", "a top-level setting means nothing to swanctl; not carried over");
    }
    for sec in &root.sections {
        match sec.name.as_str() {
            "connections" | "secrets" => {}
            "authorities" | "pools" => cx.note_section(
                sec,
                "",
                "certificate authorities and address pools are not supported (Isthmus tunnels are site-to-site with PSKs)",
            ),
            other => cx.note_section(
                sec,
                "",
                &format!("unknown section `{other}`; swanctl.conf has connections, secrets, authorities and pools"),
            ),
        }
    }
    let keys = root.section("secrets").map(|s| cx.secrets(s)).unwrap_or_default();
    let mut conns = Vec::new();
    if let Some(cs) = root.section("connections") {
        for s in &cs.settings {
            cx.note(
                s,
                "connections.",
                "a setting directly in `connections` means nothing; not carried over",
            );
        }
        for c in &cs.sections {
            if let Some(conn) = cx.connection(c, &keys, base.as_ref()) {
                conns.push(conn);
            }
        }
    }
    assemble(conns, base, opts.base.as_deref(), cx.notes)
}

/// Notes collected while mapping.
struct Cx {
    notes: Vec<Note>,
}

impl Cx {
    fn note(&mut self, s: &Setting, prefix: &str, message: &str) {
        let shown = if s.key.starts_with("secret") || prefix.starts_with("secrets.") {
            format!("{prefix}{}", s.key)
        } else {
            format!("{prefix}{} = {}", s.key, s.value)
        };
        self.notes.push(Note { loc: s.loc.clone(), setting: shown, message: message.to_owned() });
    }

    fn note_section(&mut self, sec: &Section, prefix: &str, message: &str) {
        self.notes.push(Note {
            loc: sec.loc.clone(),
            setting: format!("{prefix}{}", sec.name),
            message: message.to_owned(),
        });
    }

    /// The `ike*` secrets: (identities, the key if it is text). Other kinds are noted.
    fn secrets(&mut self, sec: &Section) -> Vec<Psk> {
        let mut out = Vec::new();
        for s in &sec.settings {
            self.note(
                s,
                "secrets.",
                "a setting directly in `secrets` means nothing; not carried over",
            );
        }
        for e in &sec.sections {
            let prefix = format!("secrets.{}.", e.name);
            if !e.name.starts_with("ike") {
                self.note_section(
                    e,
                    "secrets.",
                    "only IKE pre-shared keys (`ike` sections) are carried over; EAP, XAuth, PPK and private keys have no use in Isthmus",
                );
                continue;
            }
            let mut ids = Vec::new();
            let mut key = None;
            for s in &e.settings {
                if s.key == "id" || s.key.starts_with("id-") {
                    ids.push(s.value.clone());
                } else if s.key == "secret" {
                    key = Some(s);
                } else {
                    self.note(s, &prefix, "unknown setting of an IKE secret; not carried over");
                }
            }
            let Some(k) = key else {
                self.note_section(e, "secrets.", "has no `secret`; ignored");
                continue;
            };
            let value = match decode_secret(&k.value) {
                Ok(v) => Some(v),
                Err(why) => {
                    self.note(k, &prefix, why);
                    None
                }
            };
            out.push(Psk { name: e.name.clone(), ids, value });
        }
        out
    }

    /// One connection, or `None` (with a note) when it cannot become a tunnel.
    fn connection(&mut self, c: &Section, keys: &[Psk], base: Option<&Config>) -> Option<Conn> {
        let p = format!("connections.{}.", c.name);
        let mut conn = Conn::new(c);
        let mut remote_addrs = None;
        let mut local_addrs = None;
        for s in &c.settings {
            let v = s.value.trim();
            match s.key.as_str() {
                "version" => match v {
                    "0" => conn.version = Some(Value::String("any".into())),
                    "1" => conn.version = Some(Value::Integer(1)),
                    "2" => {}
                    _ => self.note(s, &p, "the IKE version is 0 (any), 1 or 2; IKEv2 is used"),
                },
                "local_addrs" => local_addrs = Some(s),
                "remote_addrs" => remote_addrs = Some(s),
                "proposals" => {
                    conn.ike = self.proposals(s, &p, true);
                    conn.ike_loc = Some(s.clone());
                }
                "aggressive" => conn.aggressive = yes(v),
                "encap" => conn.encap = yes(v),
                "dpd_delay" => conn.dpd_delay = self.duration(s, &p),
                "dpd_timeout" => conn.dpd_timeout = self.duration(s, &p),
                "rekey_time" => conn.ike_rekey = self.duration(s, &p),
                "over_time" => conn.ike_over = self.duration(s, &p),
                "rand_time" => conn.ike_rand = self.duration(s, &p),
                "reauth_time" => {
                    if self.duration(s, &p).is_some_and(|d| !d.is_zero()) {
                        self.note(s, &p, "reauthentication is not implemented; the IKE SA is rekeyed instead (rekey_time)");
                    }
                }
                "local_port" | "remote_port" if v == "500" => {}
                "mobike" if !yes(v) => {}
                // Isthmus has these behaviours by design, whatever is written.
                "unique" | "keyingtries" | "fragmentation" | "send_certreq" | "send_cert"
                | "childless" | "pull" | "dscp" => {}
                "mobike" => self.note(s, &p, "MOBIKE (RFC 4555) is not implemented; the tunnel stays on its addresses"),
                "local_port" | "remote_port" => {
                    self.note(s, &p, "IKE runs on UDP 500 and 4500 only")
                }
                "vips" | "pools" => self.note(s, &p, "virtual IPs and address pools (configuration payloads) are not supported: Isthmus connects networks, not clients"),
                _ => self.note(s, &p, "has no Isthmus equivalent; not carried over"),
            }
        }
        let mut auth_ok = true;
        let mut local_id = None;
        let mut remote_id = None;
        for sec in &c.sections {
            let sp = format!("{p}{}.", sec.name);
            match sec.name.as_str() {
                "local" | "remote" => {
                    let local = sec.name == "local";
                    let auth = sec.get("auth");
                    match auth.map(|a| a.value.as_str()) {
                        Some("psk") => {}
                        Some(_) => {
                            auth_ok = false;
                            let Some(a) = auth else { continue };
                            self.note(a, &sp, "certificates and EAP are not supported; only PSK. The tunnel reads its PSK from an environment variable: agree a key with the peer");
                        }
                        None => {
                            auth_ok = false;
                            self.note_section(sec, &p, "no `auth`, so swanctl's default `auth = pubkey`: certificates are not supported; only PSK. The tunnel reads its PSK from an environment variable: agree a key with the peer");
                        }
                    }
                    for s in &sec.settings {
                        match s.key.as_str() {
                            "auth" => {}
                            "id" => {
                                let id = s.value.trim().to_owned();
                                if id.contains('=') {
                                    self.note(s, &sp, "a distinguished name identifies a certificate; not supported");
                                } else if id == "%any" || id.contains('*') {
                                    if local {
                                        self.note(s, &sp, "Isthmus presents one identity; the WAN address is used");
                                    } else {
                                        remote_id = Some((id, s.clone()));
                                    }
                                } else if local {
                                    local_id = Some(id);
                                } else {
                                    remote_id = Some((id, s.clone()));
                                }
                            }
                            "certs" | "pubkeys" | "cacerts" | "cert_policy" | "ca_id"
                            | "revocation" | "groups" | "eap_id" | "aaa_id" | "xauth_id" => {
                                if auth.is_some_and(|a| a.value == "psk") {
                                    self.note(s, &sp, "certificates are not supported; only PSK");
                                }
                            }
                            _ => self.note(s, &sp, "has no Isthmus equivalent; not carried over"),
                        }
                    }
                }
                "children" => {}
                n if n.starts_with("local") || n.starts_with("remote") => self.note_section(
                    sec,
                    &p,
                    "a second authentication round is not supported; only one PSK exchange",
                ),
                _ => self.note_section(sec, &p, "unknown subsection; not carried over"),
            }
        }
        // Addresses.
        let mut local_ip = None;
        if let Some(s) = local_addrs {
            let first = s.value.split(',').next().unwrap_or("").trim();
            match first.parse::<IpAddr>() {
                Ok(a) if !s.value.contains(',') => local_ip = Some(a),
                _ => self.note(
                    s,
                    &p,
                    "Isthmus sends and answers IKE on its WAN address only; that is used",
                ),
            }
            if let (Some(a), Some(wan)) = (local_ip, base.map(|b| b.gateway.wan.address.addr))
                && a != wan
            {
                self.note(
                    s,
                    &p,
                    &format!("the base configuration's WAN address {wan} is used instead"),
                );
            }
        }
        conn.local_ip = local_ip;
        conn.remote = match remote_addrs {
            None => PeerAddress::Any,
            Some(s) => {
                let list: Vec<&str> = s.value.split(',').map(str::trim).collect();
                let one = list[0];
                if one == "%any" || one == "%any4" || one == "%any6" || one.is_empty() {
                    PeerAddress::Any
                } else {
                    match one.parse::<PeerAddress>() {
                        Ok(a) => {
                            if list.len() > 1 {
                                self.note(
                                    s,
                                    &p,
                                    &format!("a customer gateway has one address; {one} is used"),
                                );
                            }
                            a
                        }
                        Err(_) => {
                            self.note(s, &p, "address ranges and subnets are not supported; the peer is accepted from any address and recognised by its identity");
                            PeerAddress::Any
                        }
                    }
                }
            }
        };
        conn.local_id = local_id;
        let remote_wild = remote_id.as_ref().is_some_and(|(i, _)| i == "%any" || i.contains('*'));
        if conn.remote == PeerAddress::Any {
            match &remote_id {
                Some((id, _)) if !remote_wild => conn.remote_id = Some(id.clone()),
                Some((_, s)) => {
                    self.note(s, &format!("{p}remote."), "a peer with any address and any identity (road warriors) is not supported: Isthmus needs the identity of each peer without a fixed address; connection not carried over");
                    return None;
                }
                None => {
                    self.notes.push(Note {
                        loc: c.loc.clone(),
                        setting: format!("connections.{}", c.name),
                        message: "a peer with any address and any identity (road warriors) is not supported: Isthmus needs the identity of each peer without a fixed address (remote.id); connection not carried over".into(),
                    });
                    return None;
                }
            }
        } else if let Some((id, s)) = &remote_id {
            if remote_wild {
                self.note(
                    s,
                    &format!("{p}remote."),
                    "Isthmus expects one identity; the peer must present its address",
                );
            } else {
                conn.remote_id = Some(id.clone());
            }
        }
        // Children.
        if let Some(children) = c.section("children") {
            for ch in &children.sections {
                self.child(ch, &p, &mut conn);
            }
        }
        if conn.spd.is_empty() {
            self.notes.push(Note {
                loc: c.loc.clone(),
                setting: format!("connections.{}", c.name),
                message: "no child with network traffic selectors Isthmus can protect (local_ts and remote_ts as subnets); connection not carried over".into(),
            });
            return None;
        }
        if conn.ike.is_empty() && conn.ike_loc.is_none() {
            conn.ike = DEFAULT_IKE.iter().map(|s| (*s).to_owned()).collect();
        }
        if conn.esp.is_empty() {
            conn.esp = DEFAULT_ESP.iter().map(|s| (*s).to_owned()).collect();
        }
        if let (true, Some(s)) = (conn.ike.is_empty(), conn.ike_loc.clone()) {
            self.note(&s, &p, "no proposal Isthmus implements remains; Isthmus's default proposals are used: agree proposals with the peer");
            conn.ike = crate::DEFAULT_IKE_PROPOSALS.iter().map(|s| (*s).to_owned()).collect();
        }
        // IKEv1 has no AEAD or Curve25519 in phase 1 (docs/config.md, IKEv1).
        if conn.version == Some(Value::Integer(1)) {
            let before = conn.ike.len();
            conn.ike.retain(|x| {
                IkeProposal::parse(x).is_ok_and(|p| !p.encr.iter().any(|e| e.is_aead()))
            });
            for x in conn.ike.iter_mut() {
                *x = x
                    .split('-')
                    .filter(|t| !matches!(*t, "x25519" | "curve25519"))
                    .collect::<Vec<_>>()
                    .join("-");
            }
            conn.ike.retain(|x| IkeProposal::parse(x).is_ok());
            if let Some(s) = conn.ike_loc.clone()
                && (conn.ike.len() < before || conn.ike.is_empty())
            {
                self.note(&s, &p, "IKEv1 (RFC 2409) has no AEAD ciphers and no Curve25519 in phase 1; those proposals are left out");
            }
            if conn.ike.is_empty() {
                conn.ike = vec!["aes256-sha256-modp2048".into()];
            }
            for x in conn.esp.iter_mut() {
                *x = x
                    .split('-')
                    .filter(|t| !matches!(*t, "x25519" | "curve25519" | "esn"))
                    .collect::<Vec<_>>()
                    .join("-");
            }
            conn.esp.retain(|x| {
                EspProposal::parse(x)
                    .is_ok_and(|p| !p.encr.contains(&isthmus_ike::proposal::Encr::ChaCha20Poly1305))
            });
            if conn.esp.is_empty() {
                conn.esp = vec!["aes256gcm16".into()];
            }
        }
        conn.psk = match (auth_ok, pick_psk(keys, &conn)) {
            (true, Some(Psk { value: Some(v), .. })) => PskOut::Inline(v.clone()),
            (true, Some(k)) => {
                self.notes.push(Note {
                    loc: c.loc.clone(),
                    setting: format!("connections.{}", c.name),
                    message: format!("the matching secret `{}` is not text (Isthmus PSKs are UTF-8 text); the tunnel reads its PSK from the environment variable {}: agree a text key with the peer", k.name, conn.env_name()),
                });
                PskOut::Env
            }
            (true, None) => {
                self.notes.push(Note {
                    loc: c.loc.clone(),
                    setting: format!("connections.{}", c.name),
                    message: format!("no `ike` secret in `secrets` matches its identities (pass the file that has them with --secrets); the tunnel reads its PSK from the environment variable {}", conn.env_name()),
                });
                PskOut::Env
            }
            (false, _) => PskOut::Env,
        };
        Some(conn)
    }

    fn child(&mut self, ch: &Section, p: &str, conn: &mut Conn) {
        let cp = format!("{p}children.{}.", ch.name);
        let mut local = vec![("dynamic".to_owned(), None)];
        let mut remote = vec![("dynamic".to_owned(), None)];
        let mut esp = None;
        for s in &ch.settings {
            let v = s.value.trim();
            match s.key.as_str() {
                "local_ts" => local = v.split(',').map(|t| (t.trim().to_owned(), Some(s.clone()))).collect(),
                "remote_ts" => remote = v.split(',').map(|t| (t.trim().to_owned(), Some(s.clone()))).collect(),
                "esp_proposals" => esp = Some(s),
                "ah_proposals" => {
                    self.note(s, &cp, "AH is not supported, only ESP; child not carried over");
                    return;
                }
                "mode" if v != "tunnel" => {
                    self.note(s, &cp, "only tunnel mode is supported; child not carried over");
                    return;
                }
                "mode" => {}
                "rekey_time" => conn.child_rekey = self.duration(s, &cp).or(conn.child_rekey),
                "life_time" => conn.child_life = self.duration(s, &cp).or(conn.child_life),
                "rand_time" => conn.child_rand = self.duration(s, &cp).or(conn.child_rand),
                "start_action" => self.first(s, &cp, &mut conn.start_action),
                "dpd_action" => self.first(s, &cp, &mut conn.dpd_action),
                "close_action" if v == "none" => {}
                "close_action" => self.note(s, &cp, "Isthmus follows `start_action` and DPD when the peer closes the SA; no separate close action"),
                "updown" => self.note(s, &cp, "isthmusd runs no scripts; follow `isthmus events` or configure [[alarm]]s and [[notify]] webhooks"),
                "rekey_bytes" | "rekey_packets" | "life_bytes" | "life_packets" | "rand_bytes"
                | "rand_packets" => {
                    if v != "0" {
                        self.note(s, &cp, "volume-based lifetimes are not configurable; CHILD SAs rekey on time (and before the sequence number wraps)");
                    }
                }
                "hostaccess" | "ipcomp" | "sha256_96" if !yes(v) => {}
                "policies" | "replay_window" | "priority" | "copy_df" | "copy_ecn" | "copy_dscp"
                | "hw_offload" | "reqid" => {}
                _ => self.note(s, &cp, "has no Isthmus equivalent; not carried over"),
            }
        }
        if let Some(s) = esp {
            let list = self.proposals(s, &cp, false);
            if conn.esp.is_empty() {
                conn.esp = list;
            } else if conn.esp != list {
                self.note(s, &cp, "an Isthmus tunnel has one ESP proposal list for all its SPD entries; the first child's is used");
            }
        }
        let ts = |cx: &mut Cx, list: &[(String, Option<Setting>)]| -> Vec<Ts> {
            let mut out = Vec::new();
            for (t, s) in list {
                match parse_ts(t) {
                    Ok(x) => out.push(x),
                    Err(why) => match s {
                        Some(s) => cx.note(s, &cp, &format!("`{t}`: {why}")),
                        None => cx.note_section(ch, p.strip_suffix('.').map(|x| format!("{x}.children.")).as_deref().unwrap_or(""), &format!("no traffic selector means `dynamic` (this host's own address): {why}")),
                    },
                }
            }
            out
        };
        let l = ts(self, &local);
        let r = ts(self, &remote);
        if l.is_empty() || r.is_empty() {
            return;
        }
        // One SPD entry when every selector shares protocol and ports, else one per pair.
        let same = |v: &[Ts]| v.iter().all(|x| (x.proto, x.ports) == (v[0].proto, v[0].ports));
        if same(&l)
            && same(&r)
            && (l[0].proto == r[0].proto
                || r[0].proto == Protocol::Any
                || l[0].proto == Protocol::Any)
        {
            conn.spd.push(Spd {
                local: l.iter().map(|x| x.prefix).collect(),
                remote: r.iter().map(|x| x.prefix).collect(),
                proto: if l[0].proto == Protocol::Any { r[0].proto } else { l[0].proto },
                lports: l[0].ports,
                rports: r[0].ports,
            });
        } else {
            for a in &l {
                for b in &r {
                    if a.proto != b.proto && a.proto != Protocol::Any && b.proto != Protocol::Any {
                        continue;
                    }
                    conn.spd.push(Spd {
                        local: vec![a.prefix],
                        remote: vec![b.prefix],
                        proto: if a.proto == Protocol::Any { b.proto } else { a.proto },
                        lports: a.ports,
                        rports: b.ports,
                    });
                }
            }
        }
    }

    /// The first child's value for a per-tunnel setting; a different later one is noted.
    fn first(&mut self, s: &Setting, cp: &str, slot: &mut Option<String>) {
        match slot {
            None => *slot = Some(s.value.trim().to_owned()),
            Some(v) if *v == s.value.trim() => {}
            Some(_) => self.note(s, cp, "per tunnel in Isthmus; the first child's is used"),
        }
    }

    fn duration(&mut self, s: &Setting, p: &str) -> Option<Dur> {
        match swan_duration(&s.value) {
            Some(d) => Some(d),
            None => {
                self.note(s, p, "not a duration (seconds, or a number with s, m, h or d)");
                None
            }
        }
    }

    /// A proposal list: `default` expanded, algorithms Isthmus lacks dropped (each noted).
    fn proposals(&mut self, s: &Setting, p: &str, ike: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut dropped = Vec::new();
        for one in s.value.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            if one == "default" {
                let d: &[&str] = if ike { &DEFAULT_IKE } else { &DEFAULT_ESP };
                out.extend(d.iter().map(|x| (*x).to_owned()));
                continue;
            }
            // A trailing `!` makes strongSwan's list strict; Isthmus lists always are.
            let one = one.trim_end_matches('!');
            let (mut kept, mut gone) = (Vec::new(), Vec::new());
            for t in one.split('-') {
                let test = if ike {
                    IkeProposal::parse(&format!("aes128-sha256-modp2048-{t}")).is_ok()
                } else {
                    EspProposal::parse(&format!("aes128-sha256-{t}")).is_ok()
                        || EspProposal::parse(t).is_ok()
                };
                let known = test || IkeProposal::parse(&format!("{t}-sha256-modp2048")).is_ok();
                if known { kept.push(t) } else { gone.push(t) }
            }
            let joined = kept.join("-");
            let ok = if ike {
                IkeProposal::parse(&joined).is_ok()
            } else {
                EspProposal::parse(&joined).is_ok()
            };
            dropped.extend(gone.iter().map(|g| (*g).to_owned()));
            if ok && !kept.is_empty() {
                if !out.contains(&joined) {
                    out.push(joined);
                }
            } else {
                dropped.push(format!("the proposal `{one}` as a whole"));
            }
        }
        if !dropped.is_empty() {
            dropped.dedup();
            self.note(s, p, &format!("not implemented by Isthmus, left out: {} (supported: docs/config.md, `[[tunnel]]` proposals)", dropped.join(", ")));
        }
        out
    }
}

/// An `ike` secret: its identities and its value when it is text.
struct Psk {
    name: String,
    ids: Vec<String>,
    value: Option<String>,
}

/// The secret strongSwan would use for `me` and `other`: the best match by identity, where one
/// matching identity suffices and a secret without identities matches anything, weakly
/// (`mem_cred.c`, `shared_filter`; ties go to the first written).
fn pick_psk<'a>(keys: &'a [Psk], conn: &Conn) -> Option<&'a Psk> {
    let me = conn.local_id.clone().or(conn.local_ip.map(|a| a.to_string()));
    let other = conn.remote_id.clone().or(conn.remote.ip().map(|a| a.to_string()));
    let score = |k: &Psk, id: &Option<String>| -> u32 {
        if k.ids.is_empty() {
            return 1;
        }
        let Some(id) = id else { return 1 };
        let Ok(want) = id.parse::<isthmus_ike::Identity>() else { return 0 };
        if k.ids.iter().any(|i| {
            i.parse::<isthmus_ike::Identity>().is_ok_and(|i| {
                i == want
                    || i.matches(&want)
                        && matches!(
                            i,
                            isthmus_ike::Identity::Fqdn(_) | isthmus_ike::Identity::Email(_)
                        )
            })
        }) {
            20
        } else if k.ids.iter().any(|i| i == "%any") {
            1
        } else {
            0
        }
    };
    let mut best: Option<(&Psk, u32)> = None;
    for k in keys {
        let (a, b) = (score(k, &me), score(k, &other));
        if a == 0 && b == 0 {
            continue;
        }
        if best.is_none_or(|(_, s)| a + b > s) {
            best = Some((k, a + b));
        }
    }
    best.map(|(k, _)| k)
}

/// A secret's value: `0x` hex or `0s` base64 (strongSwan's `chunk_from_str` forms), else as
/// written. Binary keys cannot become an Isthmus PSK, which is text.
fn decode_secret(v: &str) -> Result<String, &'static str> {
    use base64::Engine as _;
    let bytes = if let Some(h) = v.strip_prefix("0x") {
        hex_decode(h).ok_or("the `0x` value is not hex; not carried over")?
    } else if let Some(b) = v.strip_prefix("0s") {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| "the `0s` value is not base64; not carried over")?
    } else {
        return Ok(v.to_owned());
    };
    String::from_utf8(bytes)
        .map_err(|_| "binary key (not UTF-8 text): Isthmus PSKs are text; not carried over")
}

fn hex_decode(h: &str) -> Option<Vec<u8>> {
    let h: String = h.chars().filter(|c| *c != ':').collect();
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect()
}

fn yes(v: &str) -> bool {
    matches!(v.trim(), "yes" | "true" | "enabled" | "1")
}

/// swanctl durations: seconds, or a number with `s`, `m`, `h` or `d`.
fn swan_duration(v: &str) -> Option<Dur> {
    let v = v.trim();
    let (n, mult) = match v.char_indices().last()? {
        (i, 's') => (&v[..i], 1),
        (i, 'm') => (&v[..i], 60),
        (i, 'h') => (&v[..i], 3600),
        (i, 'd') => (&v[..i], 86_400),
        _ => (v, 1),
    };
    n.trim().parse::<u64>().ok().map(|n| Dur::secs(n.saturating_mul(mult)))
}

/// One traffic selector.
struct Ts {
    prefix: Prefix,
    proto: Protocol,
    ports: PortRange,
}

/// `10.1.0.0/16`, `10.1.0.0/16[tcp/443]`, `192.0.2.1[udp]`; `dynamic` and ranges are refused.
fn parse_ts(t: &str) -> Result<Ts, String> {
    let (net, pp) = match t.split_once('[') {
        Some((n, rest)) => (n.trim(), Some(rest.strip_suffix(']').ok_or("a `[` is not closed")?)),
        None => (t, None),
    };
    if net == "dynamic" || net == "%dynamic" {
        return Err("host-to-host selectors (this gateway's own address) are not supported; Isthmus protects LAN networks".into());
    }
    if net.contains('-') {
        return Err("address ranges are not supported; write subnets".into());
    }
    let prefix = match net {
        "%any" | "0.0.0.0/0" => "0.0.0.0/0".parse(),
        "%any6" => "::/0".parse(),
        n => n.parse::<Prefix>(),
    }
    .map_err(|e| format!("not a subnet: {e}"))?;
    let (mut proto, mut ports) = (Protocol::Any, PortRange::ANY);
    if let Some(pp) = pp {
        let (pr, po) = match pp.split_once('/') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (pp.trim(), None),
        };
        if !pr.is_empty() && pr != "%any" {
            let v: Protocol = toml::Value::String(pr.into()).try_into().map_err(|_| format!("protocol `{pr}` is not known; write tcp, udp, icmp, icmpv6, esp, gre or a number"))?;
            proto = v;
        }
        if let Some(po) = po.filter(|p| !p.is_empty() && *p != "%any") {
            ports = parse_ports(po).map_err(|_| format!("port `{po}` is not a number or range (service names such as ssh are not looked up)"))?;
        }
    }
    Ok(Ts { prefix, proto, ports })
}

/// What a connection becomes.
struct Conn {
    name: String,
    loc: Loc,
    version: Option<Value>,
    local_ip: Option<IpAddr>,
    remote: PeerAddress,
    local_id: Option<String>,
    remote_id: Option<String>,
    ike: Vec<String>,
    ike_loc: Option<Setting>,
    esp: Vec<String>,
    aggressive: bool,
    encap: bool,
    dpd_delay: Option<Dur>,
    dpd_timeout: Option<Dur>,
    ike_rekey: Option<Dur>,
    ike_over: Option<Dur>,
    ike_rand: Option<Dur>,
    child_rekey: Option<Dur>,
    child_life: Option<Dur>,
    child_rand: Option<Dur>,
    start_action: Option<String>,
    dpd_action: Option<String>,
    spd: Vec<Spd>,
    psk: PskOut,
}

struct Spd {
    local: Vec<Prefix>,
    remote: Vec<Prefix>,
    proto: Protocol,
    lports: PortRange,
    rports: PortRange,
}

enum PskOut {
    Inline(String),
    Env,
}

impl Conn {
    fn new(c: &Section) -> Conn {
        Conn {
            name: sanitize(&c.name),
            loc: c.loc.clone(),
            version: None,
            local_ip: None,
            remote: PeerAddress::Any,
            local_id: None,
            remote_id: None,
            ike: Vec::new(),
            ike_loc: None,
            esp: Vec::new(),
            aggressive: false,
            encap: false,
            dpd_delay: None,
            dpd_timeout: None,
            ike_rekey: None,
            ike_over: None,
            ike_rand: None,
            child_rekey: None,
            child_life: None,
            child_rand: None,
            start_action: None,
            dpd_action: None,
            spd: Vec::new(),
            psk: PskOut::Env,
        }
    }

    fn env_name(&self) -> String {
        let n: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        format!("ISTHMUS_PSK_{n}")
    }

    fn weak(&self) -> Vec<&'static str> {
        let mut t = crate::Tunnel {
            ike_proposals: self.ike.clone(),
            esp_proposals: self.esp.clone(),
            ..placeholder_tunnel()
        };
        t.name.clear();
        t.weak_algorithms()
    }

    /// The `[[tunnel]]` table, with only what swanctl.conf said (defaults left to Isthmus).
    fn tunnel(&self, cgw: &str) -> Table {
        let mut t = Table::new();
        let s = |v: &str| Value::String(v.to_owned());
        t.insert("name".into(), s(&self.name));
        t.insert("customer_gateway".into(), s(cgw));
        if let Some(id) = &self.local_id {
            t.insert("local_id".into(), s(id));
        }
        t.insert(
            "psk".into(),
            match &self.psk {
                PskOut::Inline(v) => s(v),
                PskOut::Env => {
                    let mut e = Table::new();
                    e.insert("env".into(), s(&self.env_name()));
                    Value::Table(e)
                }
            },
        );
        if let Some(v) = &self.version {
            t.insert("ike_version".into(), v.clone());
        }
        if self.aggressive && self.version.is_some() {
            t.insert("aggressive_mode".into(), Value::Boolean(true));
        }
        let list = |v: &[String]| Value::Array(v.iter().map(|x| s(x)).collect());
        t.insert("ike_proposals".into(), list(&self.ike));
        t.insert("esp_proposals".into(), list(&self.esp));
        if !self.weak().is_empty() {
            t.insert("allow_weak".into(), Value::Boolean(true));
        }
        // strongSwan rekeys at rekey_time and ends the SA over_time later (default 10 % of
        // rekey_time), with up to rand_time (default over_time) taken off the rekey time.
        if let Some(r) = self.ike_rekey.filter(|r| !r.is_zero()) {
            let over = self.ike_over.unwrap_or(Dur::millis(r.as_millis() / 10));
            let life = Dur::millis(r.as_millis() + over.as_millis());
            t.insert("ike_lifetime".into(), s(&life.to_string()));
            t.insert("ike_rekey_margin".into(), s(&over.to_string()));
            if let Some(f) = fuzz(over, self.ike_rand) {
                t.insert("rekey_fuzz_percent".into(), Value::Integer(f));
            }
        }
        if let Some(r) = self.child_rekey.filter(|r| !r.is_zero()) {
            let life = self.child_life.unwrap_or(Dur::millis(r.as_millis() * 11 / 10));
            let margin = Dur::millis(life.as_millis().saturating_sub(r.as_millis()));
            t.insert("child_lifetime".into(), s(&life.to_string()));
            if !margin.is_zero() {
                t.insert("child_rekey_margin".into(), s(&margin.to_string()));
            }
        }
        let mut dpd = Table::new();
        if let Some(d) = self.dpd_delay {
            dpd.insert("delay".into(), s(&d.to_string()));
            let timeout = self.dpd_timeout.unwrap_or(Dur::secs(150));
            let timeout = if timeout <= d { Dur::millis(d.as_millis() * 5) } else { timeout };
            if !d.is_zero() {
                dpd.insert("timeout".into(), s(&timeout.to_string()));
            }
        }
        // swanctl's default dpd_action is clear.
        let action = match self.dpd_action.as_deref() {
            Some("restart") => "restart",
            _ => "clear",
        };
        dpd.insert("action".into(), s(action));
        t.insert("dpd".into(), Value::Table(dpd));
        let start = match (self.start_action.as_deref(), &self.remote) {
            (_, PeerAddress::Any) => "none",
            (Some(a), _) if a.contains("start") => "start",
            (Some(a), _) if a.contains("trap") => "trap",
            _ => "none",
        };
        t.insert("start_action".into(), s(start));
        if self.encap {
            t.insert("nat_t".into(), s("force"));
        }
        let spd = self
            .spd
            .iter()
            .map(|e| {
                let mut x = Table::new();
                let ps = |v: &[Prefix]| Value::Array(v.iter().map(|p| s(&p.to_string())).collect());
                x.insert("local".into(), ps(&e.local));
                x.insert("remote".into(), ps(&e.remote));
                if e.proto != Protocol::Any {
                    x.insert("protocol".into(), s(&e.proto.to_string()));
                }
                if !e.lports.is_any() {
                    x.insert("local_ports".into(), s(&format_ports(&e.lports)));
                }
                if !e.rports.is_any() {
                    x.insert("remote_ports".into(), s(&format_ports(&e.rports)));
                }
                Value::Table(x)
            })
            .collect();
        t.insert("spd".into(), Value::Array(spd));
        t
    }
}

/// `rand_time` as a percent of the margin, when it differs from Isthmus's 100 %.
fn fuzz(margin: Dur, rand: Option<Dur>) -> Option<i64> {
    let r = rand?;
    if margin.is_zero() {
        return None;
    }
    let pct = (r.as_millis() * 100 / margin.as_millis()).min(99) as i64;
    (pct != 100).then_some(pct)
}

fn placeholder_tunnel() -> crate::Tunnel {
    let text = "[gateway]\nname = \"x\"\n[gateway.wan]\ninterface = \"eth0\"\naddress = \"192.0.2.1/24\"\nnext_hop = \"192.0.2.2\"\n[[tunnel]]\nname = \"t\"\ncustomer_gateway = \"c\"\npsk = \"x\"\n";
    Config::from_toml(text)
        .ok()
        .and_then(|mut c| c.tunnels.pop())
        .unwrap_or_else(|| unreachable!("a fixed document parses"))
}

/// A name Isthmus accepts: letters, digits, `-`, `_`, `.`; 1–64 characters.
fn sanitize(n: &str) -> String {
    let s: String = n
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    if s.is_empty() { "imported".into() } else { s }
}

/// Placeholders for `[gateway]` when no base configuration is given: the WAN from
/// `local_addrs`, one LAN holding every local selector.
fn placeholder_gateway(conns: &[Conn], notes: &mut Vec<Note>, main: &Loc) -> String {
    let wan = conns.iter().find_map(|c| c.local_ip).unwrap_or(IpAddr::from([192, 0, 2, 1]));
    let (wan_len, next_hop) = match wan {
        IpAddr::V4(a) => {
            let o = a.octets();
            let hop = if o[3] == 254 { 253 } else { 254 };
            (24, IpAddr::from([o[0], o[1], o[2], hop]))
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] = if o[15] == 0xfe { 0xfd } else { 0xfe };
            (64, IpAddr::from(o))
        }
    };
    let mut locals: Vec<Prefix> = Vec::new();
    for c in conns {
        for e in &c.spd {
            for p in &e.local {
                if !locals.iter().any(|q| q.covers(p)) {
                    locals.retain(|q| !p.covers(q));
                    locals.push(*p);
                }
            }
        }
    }
    let mut addresses = Vec::new();
    let mut networks = Vec::new();
    let mut hop = None;
    for p in &locals {
        let v4 = p.addr().is_ipv4();
        if p.len() <= if v4 { 30 } else { 126 }
            && addresses.iter().all(|(a, _): &(IpAddr, u8)| a.is_ipv4() != v4)
        {
            addresses.push((nth_host(p, 1), p.len()));
            if hop.is_none() {
                hop = Some(nth_host(p, 2));
            }
        } else {
            networks.push(*p);
        }
    }
    let mut s = String::new();
    s.push_str("# PLACEHOLDERS: swanctl.conf does not describe this gateway's interfaces. Check every\n# value of [gateway] below (or import again with --base FILE).\n");
    s.push_str(
        "[gateway]\nname = \"imported\"\n\n[gateway.wan]\ninterface = \"eth0\"   # placeholder\n",
    );
    s.push_str(&format!("address = \"{wan}/{wan_len}\"   # from local_addrs; the prefix length is a placeholder\nnext_hop = \"{next_hop}\"   # placeholder\n"));
    if !addresses.is_empty() {
        s.push_str("\n[[gateway.lan]]\nname = \"lan\"\ninterface = \"eth1\"   # placeholder\n");
        let a: Vec<String> = addresses.iter().map(|(a, l)| format!("\"{a}/{l}\"")).collect();
        s.push_str(&format!(
            "addresses = [{}]   # placeholders: the first address of each local selector\n",
            a.join(", ")
        ));
        if !networks.is_empty() {
            let n: Vec<String> = networks.iter().map(|p| format!("\"{p}\"")).collect();
            s.push_str(&format!("networks = [{}]\n", n.join(", ")));
            if let Some(h) = hop {
                s.push_str(&format!("next_hop = \"{h}\"   # placeholder\n"));
            }
        }
    }
    notes.push(Note {
        loc: main.clone(),
        setting: "gateway".into(),
        message: "swanctl.conf does not describe this gateway's interfaces: [gateway] holds placeholders (WAN eth0, LAN eth1 with the first address of each local selector); edit them, or import with --base FILE".into(),
    });
    s
}

/// The `n`th address of `p` (1 is the first after the network address).
fn nth_host(p: &Prefix, n: u8) -> IpAddr {
    match p.addr() {
        IpAddr::V4(a) => std::net::Ipv4Addr::from(u32::from(a).wrapping_add(n.into())).into(),
        IpAddr::V6(a) => std::net::Ipv6Addr::from(u128::from(a).wrapping_add(n.into())).into(),
    }
}

/// Groups connections into customer gateways, renders the document, validates it, and leaves
/// out connections the validation refuses.
fn assemble(
    mut conns: Vec<Conn>,
    base: Option<Config>,
    base_text: Option<&str>,
    mut notes: Vec<Note>,
) -> Result<Imported, ImportError> {
    let main_loc = notes.first().map(|n| Loc { file: n.loc.file.clone(), line: 1 });
    let main_loc = conns
        .first()
        .map(|c| Loc { file: c.loc.file.clone(), line: 1 })
        .or(main_loc)
        .unwrap_or(Loc { file: "swanctl.conf".into(), line: 1 });
    let taken_t: Vec<String> =
        base.iter().flat_map(|b| b.tunnels.iter().map(|t| t.name.clone())).collect();
    let taken_c: Vec<String> =
        base.iter().flat_map(|b| b.customer_gateways.iter().map(|t| t.name.clone())).collect();
    // Unique tunnel names beside the base's.
    let mut used = taken_t.clone();
    for c in conns.iter_mut() {
        let mut n = c.name.clone();
        let mut k = 2;
        while used.contains(&n) {
            n = format!("{}-{k}", c.name);
            k += 1;
        }
        used.push(n.clone());
        c.name = n;
    }
    let header = "\n# Imported from swanctl.conf by `isthmus config import`. This file holds pre-shared keys:\n# keep it readable by root only.\n";
    let gateway = match base_text {
        Some(t) => t.to_owned(),
        None => {
            let mut n = Vec::new();
            let g = placeholder_gateway(&conns, &mut n, &main_loc);
            notes.extend(n);
            g
        }
    };
    loop {
        // Customer gateways by (address, identity), named after their first connection.
        let mut cgws: BTreeMap<(String, Option<String>), (usize, String)> = BTreeMap::new();
        let mut cgw_tables = Vec::new();
        let mut cgw_of = Vec::new();
        let mut used_c = taken_c.clone();
        for c in &conns {
            let key = (c.remote.to_string(), c.remote_id.clone());
            let name = match cgws.get(&key) {
                Some((_, n)) => n.clone(),
                None => {
                    let mut n = c.name.clone();
                    let mut k = 2;
                    while used_c.contains(&n) {
                        n = format!("{}-{k}", c.name);
                        k += 1;
                    }
                    used_c.push(n.clone());
                    let mut t = Table::new();
                    t.insert("name".into(), Value::String(n.clone()));
                    t.insert("address".into(), Value::String(c.remote.to_string()));
                    if let Some(id) = &c.remote_id {
                        t.insert("ike_id".into(), Value::String(id.clone()));
                    }
                    cgw_tables.push(Value::Table(t));
                    cgws.insert(key, (cgw_tables.len() - 1, n.clone()));
                    n
                }
            };
            cgw_of.push(name);
        }
        let tunnels: Vec<Value> =
            conns.iter().zip(&cgw_of).map(|(c, g)| Value::Table(c.tunnel(g))).collect();
        let mut doc = Table::new();
        if !cgw_tables.is_empty() {
            doc.insert("customer_gateway".into(), Value::Array(cgw_tables));
            doc.insert("tunnel".into(), Value::Array(tunnels));
        }
        let body = toml::to_string(&doc).map_err(|e| {
            ImportError::Invalid(Errors(vec![crate::Issue::error(
                "",
                format!("cannot render the configuration: {e}"),
            )]))
        })?;
        let text = format!("{}\n{header}\n{body}", gateway.trim_end());
        match Config::check(&text) {
            Ok(checked) => {
                notes.sort_by(|a, b| {
                    (a.loc.file != main_loc.file, &a.loc.file, a.loc.line).cmp(&(
                        b.loc.file != main_loc.file,
                        &b.loc.file,
                        b.loc.line,
                    ))
                });
                let tunnels = conns.iter().map(|c| c.name.clone()).collect();
                return Ok(Imported { text, checked, notes, tunnels });
            }
            Err(errors) => {
                // Leave out the connections the errors are about; fail on any other error.
                let first_t = taken_t.len();
                let first_c = taken_c.len();
                let mut drop = Vec::new();
                for e in &errors.0 {
                    let idx = index_of(&e.path, "tunnel[")
                        .and_then(|i| i.checked_sub(first_t))
                        .or_else(|| {
                            let ci =
                                index_of(&e.path, "customer_gateway[")?.checked_sub(first_c)?;
                            let name =
                                cgws.values().find(|(i, _)| *i == ci).map(|(_, n)| n.clone())?;
                            cgw_of.iter().position(|n| *n == name)
                        });
                    match idx {
                        Some(i) if i < conns.len() => {
                            if !drop.contains(&i) {
                                drop.push(i);
                                let c = &conns[i];
                                notes.push(Note {
                                    loc: c.loc.clone(),
                                    setting: format!("connections.{}", c.name),
                                    message: format!(
                                        "connection not carried over: Isthmus validation refuses it: {}: {}",
                                        e.path.split_once("].").map_or(e.path.as_str(), |(_, f)| f),
                                        e.message
                                    ),
                                });
                            }
                        }
                        _ => return Err(ImportError::Invalid(errors)),
                    }
                }
                drop.sort_unstable();
                for i in drop.into_iter().rev() {
                    conns.remove(i);
                }
            }
        }
    }
}

/// `3` for `tunnel[3].psk` and prefix `tunnel[`.
fn index_of(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?;
    rest.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests;

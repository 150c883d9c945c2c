//! Human-readable tables.

use isthmus_api as api;

use crate::when;

/// `1h02m`, `3m05s`, `42s`.
pub fn secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn print(rows: Vec<Vec<String>>) {
    print!("{}", render(rows));
}

/// Columns padded to their widest cell, two spaces apart, a line per row.
fn render(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn state(s: api::TunnelState) -> String {
    format!("{s:?}").to_lowercase()
}

/// `tunnel list` and the tunnels of `status`.
pub fn tunnels(v: &[api::TunnelSummary]) {
    let mut rows = vec![
        vec![
            "TUNNEL",
            "PEER",
            "ADDRESS",
            "STATE",
            "UPTIME",
            "PKTS OUT",
            "PKTS IN",
            "DROPS",
            "LAST ERROR",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for t in v {
        rows.push(vec![
            t.name.clone(),
            t.peer.clone(),
            t.peer_address.clone(),
            state(t.state),
            if t.uptime_secs > 0 { secs(t.uptime_secs) } else { "-".into() },
            t.counters.packets_out.to_string(),
            t.counters.packets_in.to_string(),
            t.counters.drops.iter().map(|(_, n)| n).sum::<u64>().to_string(),
            t.last_error.clone().unwrap_or_default(),
        ]);
    }
    print(rows);
}

/// `tunnel show`.
pub fn tunnel_detail(d: &api::TunnelDetail) {
    let s = &d.summary;
    println!("tunnel     {} -> {} ({})", s.name, s.peer, s.peer_address);
    println!(
        "state      {}{}",
        state(s.state),
        if s.uptime_secs > 0 { format!(", up {}", secs(s.uptime_secs)) } else { String::new() }
    );
    match (&d.ike_proposal, d.ike_version) {
        (Some(p), Some(v)) => println!("ike        IKEv{v} {p}"),
        (Some(p), None) => println!("ike        {p}"),
        (None, _) => println!("ike        -"),
    }
    if !d.weak_algorithms.is_empty() {
        println!(
            "weak       {} (allowed by allow_weak = true; RFC 8247 advises against them)",
            d.weak_algorithms.join(", ")
        );
    }
    println!("rekeys     {}", d.rekeys);
    println!(
        "traffic    out {} pkts / {} B, in {} pkts / {} B (since start, across rekeys)",
        s.counters.packets_out, s.counters.bytes_out, s.counters.packets_in, s.counters.bytes_in
    );
    println!("drops      {}", stage_drops(&d.drops));
    if let Some(e) = &s.last_error {
        println!("last error {e}");
    }
    if let Some(h) = &d.health {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or("-".into());
        println!(
            "health     {} ({} -> {}): loss {:.0} % ({} of {} probes), latency avg {} min {} max {}, jitter {}",
            match h.state {
                api::HealthState::Healthy => "healthy",
                api::HealthState::Unhealthy => "UNHEALTHY",
                api::HealthState::Unknown => "unknown",
            },
            h.source,
            h.destination,
            h.loss_ratio * 100.0,
            h.sent - h.received,
            h.sent,
            ms(h.latency_avg_ms),
            ms(h.latency_min_ms),
            ms(h.latency_max_ms),
            ms(h.jitter_ms),
        );
        if let Some(e) = &h.last_error {
            println!("           last probe: {e}");
        }
    }
    for c in &d.children {
        println!(
            "child {}: spi in {} out {}, {}, {} <=> {}, age {}, last in {}, last out {}",
            c.name,
            c.spi_in,
            c.spi_out,
            c.proposal,
            c.local_ts.join(","),
            c.remote_ts.join(","),
            secs(c.age_secs),
            c.last_in_secs.map(|s| format!("{} ago", secs(s))).unwrap_or("never".into()),
            c.last_out_secs.map(|s| format!("{} ago", secs(s))).unwrap_or("never".into()),
        );
    }
    if !d.events.is_empty() {
        println!("recent events:");
        let now = when::now();
        let rows = d
            .events
            .iter()
            .map(|e| {
                vec![
                    format!("  {}", when::human(e.time, now)),
                    e.kind.to_string(),
                    e.message.clone(),
                ]
            })
            .collect();
        print(rows);
    }
}

/// A rekey countdown: `-` for none (not configured, or replaced), `due` once it has passed (the
/// rekey is under way).
fn countdown(s: Option<u64>) -> String {
    match s {
        None => "-".into(),
        Some(0) => "due".into(),
        Some(s) => secs(s),
    }
}

/// `sa list`: a row per IKE SA with its CHILD SAs indented below it. IKE SPIs are written as
/// swanctl does, `_i` / `_r` with a `*` on this gateway's; CHILD SA SPIs as `tunnel show` does.
/// Bytes and packets are the CHILD SAs' (inner packets, this SA only).
pub fn sas(v: &[api::IkeSa]) -> String {
    if v.is_empty() {
        return "no IKE SA is established (`isthmus tunnel list` says why)\n".into();
    }
    let head = [
        "SA",
        "TYPE",
        "PEER / SELECTORS",
        "SPIS",
        "ALGORITHMS",
        "AGE",
        "REKEY IN",
        "BYTES IN",
        "BYTES OUT",
        "PKTS IN",
        "PKTS OUT",
    ];
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for s in v {
        let (ours_i, ours_r) = if s.initiator { ("*", "") } else { ("", "*") };
        let mut ike = vec![
            s.tunnel.clone(),
            format!("IKEv{}", s.ike_version),
            s.peer.clone(),
            format!("{}_i{ours_i} {}_r{ours_r}", s.spi_i, s.spi_r),
            s.proposal.clone(),
            secs(s.age_secs),
            countdown(s.rekey_in_secs),
        ];
        ike.extend(["-"; 4].map(String::from));
        rows.push(ike);
        for c in &s.children {
            let k = &c.counters;
            rows.push(vec![
                format!("  {}", c.name),
                if s.encap { "ESP/UDP" } else { "ESP" }.into(),
                format!("{} <=> {}", c.local_ts.join(","), c.remote_ts.join(",")),
                format!("in {} out {}", c.spi_in, c.spi_out),
                c.proposal.clone(),
                secs(c.age_secs),
                countdown(c.rekey_in_secs),
                k.bytes_in.to_string(),
                k.bytes_out.to_string(),
                k.packets_in.to_string(),
                k.packets_out.to_string(),
            ]);
        }
    }
    render(rows)
}

/// `config revisions`.
pub fn revisions(v: &[api::Revision]) {
    let mut rows =
        vec![vec!["REV".to_string(), "TIME".into(), "AUTHOR".into(), "".into(), "COMMENT".into()]];
    let now = when::now();
    for r in v {
        let mark = match (r.active, r.confirm_deadline) {
            (true, Some(d)) => format!("active, unconfirmed: reverts {}", when::human(d, now)),
            (true, None) => "active".into(),
            _ => String::new(),
        };
        rows.push(vec![
            r.number.to_string(),
            when::human(r.time, now),
            r.author.clone(),
            mark,
            r.comment.clone(),
        ]);
    }
    print(rows);
}

/// `alarm list`.
pub fn alarms(v: &[api::Alarm]) {
    let mut rows = vec![
        vec!["ALARM", "SUBJECT", "SEVERITY", "RAISED", "CLEARED", "ACKED-BY", "MESSAGE"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    let now = when::now();
    for a in v {
        rows.push(vec![
            a.name.clone(),
            a.subject.clone(),
            a.severity.to_string(),
            when::human(a.raised, now),
            a.cleared.map_or("-".into(), |c| when::human(c, now)),
            a.acknowledged.as_ref().map_or("-".into(), |k| k.by.clone()),
            a.message.clone(),
        ]);
    }
    print(rows);
}

/// `plugin hooks` (and the second half of `plugin list`).
pub fn plugin_hooks(v: &[api::PluginHook]) {
    let mut rows = vec![
        vec!["HOOK", "PLUGIN", "SOURCE", "GENERATION", "ENTRIES", "STATE"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for h in v {
        let state = match (&h.quarantined, &h.last_error) {
            (Some(q), _) => format!("quarantined: {q}"),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => "ok".into(),
        };
        let entries = match (h.entries, h.chains) {
            (Some(e), Some(c)) => format!("{e} in {c} chains"),
            (e, _) => opt(e.map(|e| e as u64)),
        };
        rows.push(vec![
            h.hook.clone(),
            h.plugin.clone(),
            h.source.clone(),
            opt(h.generation),
            entries,
            state,
        ]);
    }
    print(rows);
    for h in v {
        if let Some(n) = &h.note {
            println!("note ({}): {n}", h.hook);
        }
    }
}

/// `plugin list`.
pub fn plugins(v: &[api::Plugin]) {
    let mut rows = vec![
        vec!["NAME", "VERSION", "HOOK", "DIGEST", "SIGNER", "STATE"]
            .into_iter()
            .map(String::from)
            .collect(),
    ];
    for p in v {
        let state = match (&p.quarantined, p.active) {
            (Some(q), _) => format!("quarantined: {q}"),
            (None, true) => "active".into(),
            (None, false) => "stored".into(),
        };
        rows.push(vec![
            p.name.clone(),
            p.version.clone(),
            p.hook.clone(),
            p.digest.chars().take(16).collect(),
            p.signer.clone(),
            state,
        ]);
    }
    print(rows);
}

/// Drops as `stage/reason=n`, or `none`.
pub fn stage_drops(v: &[api::StageDrop]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|d| format!("{}/{}={}", d.stage, d.reason, d.packets))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(name: &str, spi_in: &str, rekey_in: Option<u64>, packets: u64) -> api::ChildSa {
        api::ChildSa {
            name: name.into(),
            spi_in: spi_in.into(),
            spi_out: "a45032f7".into(),
            proposal: "aes256gcm16-noesn".into(),
            local_ts: vec!["10.1.0.0/16".into()],
            remote_ts: vec!["10.2.0.0/16".into(), "10.3.0.0/16".into()],
            age_secs: 192,
            last_in_secs: None,
            last_out_secs: None,
            rekey_in_secs: rekey_in,
            expire_in_secs: Some(3600),
            counters: api::Counters {
                packets_in: packets,
                bytes_in: packets * 84,
                packets_out: packets + 1,
                bytes_out: (packets + 1) * 84,
                drops: Default::default(),
            },
        }
    }

    fn ike(tunnel: &str, version: u8, initiator: bool, children: Vec<api::ChildSa>) -> api::IkeSa {
        api::IkeSa {
            tunnel: tunnel.into(),
            ike_version: version,
            local: "192.0.2.1:500".into(),
            peer: "198.51.100.2:4500".into(),
            spi_i: "0123456789abcdef".into(),
            spi_r: "fedcba9876543210".into(),
            initiator,
            proposal: "aes256gcm16-prfsha256-x25519".into(),
            encap: version == 1,
            age_secs: 3725,
            rekey_in_secs: Some(13_000),
            expire_in_secs: Some(14_000),
            children,
        }
    }

    #[test]
    fn sa_list_marks_our_spi_and_nests_children_with_countdowns_and_counters() {
        let v = [
            ike(
                "to-a",
                2,
                true,
                vec![child("net", "6db4f79a", Some(3190), 12), child("net", "c0ffee01", None, 0)],
            ),
            ike("to-b", 1, false, vec![child("to-b/0", "00000001", Some(0), 0)]),
        ];
        let got = sas(&v);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 6, "{got}");
        assert!(lines[1].starts_with("to-a "), "{got}");
        assert!(lines[1].contains("0123456789abcdef_i* fedcba9876543210_r "), "{got}");
        assert!(lines[4].contains("0123456789abcdef_i fedcba9876543210_r*"), "{got}");
        assert!(lines[4].contains(" IKEv1 "), "{got}");
        let cells = |l: &str| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(lines[2]),
            [
                "net",
                "ESP",
                "10.1.0.0/16 <=> 10.2.0.0/16,10.3.0.0/16",
                "in 6db4f79a out a45032f7",
                "aes256gcm16-noesn",
                "3m12s",
                "53m10s",
                "1008",
                "1092",
                "12",
                "13"
            ],
            "{got}"
        );
        assert_eq!(cells(lines[1])[5..], ["1h02m", "3h36m", "-", "-", "-", "-"], "{got}");
        assert_eq!(cells(lines[3])[6], "-", "a replaced SA has no rekey: {got}");
        assert_eq!(cells(lines[5])[1], "ESP/UDP", "{got}");
        assert_eq!(cells(lines[5])[6], "due", "{got}");
        // Columns line up: every row's SPIs start where the header's do.
        let col = lines[0].find("SPIS").unwrap();
        assert!(
            lines.iter().skip(1).all(|l| l[col..].starts_with(|c: char| c.is_ascii_alphanumeric())),
            "{got}"
        );
        assert_eq!(sas(&[]), "no IKE SA is established (`isthmus tunnel list` says why)\n");
    }
}

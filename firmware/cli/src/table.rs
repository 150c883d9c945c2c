//! Human-readable tables.

use isthmus_api as api;

/// `1h02m`, `3m05s`, `42s`.
pub fn secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn print(rows: Vec<Vec<String>>) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        println!("{}", line.join("  ").trim_end());
    }
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
        for e in &d.events {
            println!("  {} {} {}", e.time, e.kind, e.message);
        }
    }
}

/// `config revisions`.
pub fn revisions(v: &[api::Revision]) {
    let mut rows =
        vec![vec!["REV".to_string(), "TIME".into(), "AUTHOR".into(), "".into(), "COMMENT".into()]];
    for r in v {
        let mark = match (r.active, r.confirm_deadline) {
            (true, Some(_)) => "active, unconfirmed",
            (true, None) => "active",
            _ => "",
        };
        rows.push(vec![
            r.number.to_string(),
            r.time.to_string(),
            r.author.clone(),
            mark.into(),
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
    for a in v {
        rows.push(vec![
            a.name.clone(),
            a.subject.clone(),
            format!("{:?}", a.severity).to_lowercase(),
            a.raised.to_string(),
            a.cleared.map(|c| c.to_string()).unwrap_or("-".into()),
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

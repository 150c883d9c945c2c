//! How the tracer words what it shows: protocols, services, prefix lists, counts.

use isthmus_tables::{FlowKey, Prefix};

pub(super) fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132 | 136)
}

/// `tcp/443`, `icmp`, `udp/53`.
pub(super) fn service(f: &FlowKey) -> String {
    if has_ports(f.proto) {
        format!("{}/{}", proto_name(f.proto), f.dst_port)
    } else {
        proto_name(f.proto)
    }
}

pub(super) fn describe(f: &FlowKey, size: u32) -> String {
    if has_ports(f.proto) {
        format!(
            "{} {}:{} -> {}:{} ({size} bytes)",
            proto_name(f.proto),
            f.src,
            f.src_port,
            f.dst,
            f.dst_port
        )
    } else {
        format!("{} {} -> {} ({size} bytes)", proto_name(f.proto), f.src, f.dst)
    }
}

pub(super) fn list(v: &[Prefix]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// 5000 -> "5,000".
pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

//! Why a tunnel does not come up: the last failed negotiation and the tunnel's recent events.

use isthmus_api::{self as api, EventKind};

use super::DiagnoseError;
use crate::obs::Readings;
use crate::obs::events::EventBus;

/// `GET /diagnose/tunnel/NAME`: the last failure the driver recorded and recent events.
pub fn diagnose_tunnel(
    r: &Readings,
    events: &EventBus,
    name: &str,
) -> Result<api::TunnelDiagnosis, DiagnoseError> {
    let (_, cfg) = r.applied.as_ref().ok_or(DiagnoseError::NoConfig)?;
    let t = cfg.tunnel(name).ok_or_else(|| DiagnoseError::UnknownTunnel(name.to_owned()))?;
    let st = r.tunnel(name);
    let state = match &st {
        _ if !t.enabled => "disabled".to_owned(),
        Some(s) => s.state.to_string(),
        None => "down".to_owned(),
    };
    let last_failure =
        st.as_ref().and_then(|s| s.last_failure.as_ref()).map(|e| api::NegotiationFailure {
            exchange: e.exchange.to_string(),
            cause: e.cause.to_string(),
            ours: e.ours.clone(),
            theirs: e.theirs.clone(),
            suggestion: e.suggestion.clone(),
        });
    // Events of this tunnel, and those of requests from its peer that matched no tunnel.
    let peer = cfg.customer_gateway(&t.customer_gateway).map(|c| c.address.to_string());
    let mut recent = events.recent(&format!("tunnel/{name}"), 50);
    if let Some(p) = &peer {
        recent.extend(
            events
                .recent("tunnel/", 50)
                .into_iter()
                .filter(|e| e.message.contains(&format!("peer {p}"))),
        );
    }
    recent.retain(|e| {
        matches!(
            e.kind,
            EventKind::NegotiationFailed
                | EventKind::TunnelDown
                | EventKind::InstallFailed
                | EventKind::ChildDown
        )
    });
    recent.sort_by_key(|e| e.time);
    let keep = recent.len().saturating_sub(10);
    recent.drain(..keep);
    let mut advice = Vec::new();
    if !t.enabled {
        advice.push(format!("tunnel {name} is disabled: set enabled = true"));
    }
    if let Some(f) = &last_failure {
        match &f.suggestion {
            Some(s) => advice.push(s.clone()),
            None => advice.push(format!("{} failed: {}", f.exchange, f.cause)),
        }
    }
    // A peer known by a DNS name: its tunnels wait for an answer (core::resolve keeps them).
    let unresolved = cfg.customer_gateway(&t.customer_gateway).and_then(|c| match &c.address {
        isthmus_config::PeerAddress::Name(n) => {
            let v4 = cfg.gateway.wan.address.addr.is_ipv4();
            match crate::core::resolve::answer(n, v4) {
                Some(crate::core::resolve::Answer::Addr(_)) => None,
                Some(crate::core::resolve::Answer::Failed(why)) => Some(format!(
                    "customer gateway {}: {why}; the tunnel waits for an answer (asked again every {} s)",
                    c.name,
                    crate::core::resolve::RETRY.as_secs()
                )),
                None => Some(format!(
                    "customer gateway {}: {n} has not been resolved yet; the tunnel waits for an answer",
                    c.name
                )),
            }
        }
        _ => None,
    });
    if state != "up"
        && let Some(u) = unresolved
    {
        advice.push(u);
    } else if state != "up" && last_failure.is_none() && t.enabled {
        match &peer {
            Some(p) => advice.push(format!(
                "no negotiation has failed yet: check that the peer {p} is reachable on UDP 500/4500 and configured for this gateway"
            )),
            None => advice.push("the customer gateway is not configured".into()),
        }
    }
    let transport = st.as_ref().filter(|s| s.state == isthmus_tunnels::TunnelState::Up).map(|s| {
        match (s.encap, t.nat_t) {
            (true, isthmus_config::NatT::Force) => {
                format!("ESP in UDP 4500 to {} (nat_t = force)", s.peer)
            }
            (true, _) => format!(
                "ESP in UDP 4500 to {}: NAT detected on the path ({}); the NAT device must pass UDP 500 and 4500",
                s.peer,
                if s.ike_version == Some(1) { "RFC 3947" } else { "RFC 7296 §2.23" }
            ),
            (false, _) => format!("ESP (IP protocol 50) to {}: no NAT detected", s.peer),
        }
    });
    Ok(api::TunnelDiagnosis {
        transport,
        tunnel: name.to_owned(),
        state,
        last_failure,
        last_down_reason: st.and_then(|s| s.last_down_reason.clone()),
        events: recent,
        advice,
    })
}

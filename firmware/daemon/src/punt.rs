//! The punt path (issue 6): flows that match a security-group `punt` rule wait in the dataplane's
//! flow table (their packets dropped and counted as `punt-pending`) until the security-group
//! plugin decides them. One thread takes them in batches ([`isthmus_dataplane::Dataplane::take_punts`]),
//! asks the plugin through the supervisor ([`isthmus_policy::Supervisor::decide`], which runs
//! under the plugin's fuel and memory limits and its quarantine), and applies each decision
//! ([`isthmus_dataplane::Dataplane::resolve_punt`]).
//!
//! A flow without a decision (no punt-capable plugin, a fault, quarantine, or a request
//! classified with another table generation than the supervisor's, whose rule index may name
//! another rule now) is left alone: the flow table applies its punt-timeout default.
//!
//! The thread holds only weak references between batches, and ends when the dataplane or the
//! policy runner is gone (a restarted dataplane gets a new thread).

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isthmus_dataplane::{Dataplane, PuntRequest};
use isthmus_policy::{PuntDecision, Supervisor};

use crate::policy::Policy;

/// Flows asked about per plugin call.
pub const BATCH: usize = 64;

/// Wait when no flow is waiting: short, since a punted flow's packets are dropped meanwhile.
const IDLE: Duration = Duration::from_millis(2);

/// Splits requests into those the supervisor's current security-group table (at `generation`)
/// can name for the plugin, and stale ones classified with another generation.
fn split_current(reqs: Vec<PuntRequest>, generation: u64) -> (Vec<PuntRequest>, Vec<PuntRequest>) {
    reqs.into_iter().partition(|r| r.generation == generation)
}

/// Pairs each request with the plugin's decision on it; requests without one are left out
/// (the flow table's timeout default applies to them).
fn decided(
    reqs: &[PuntRequest],
    decisions: Vec<Option<PuntDecision>>,
) -> impl Iterator<Item = (&PuntRequest, PuntDecision)> {
    reqs.iter().zip(decisions).filter_map(|(r, d)| d.map(|d| (r, d)))
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Round {
    /// Requests taken from the dataplane.
    taken: usize,
    /// Decisions applied to flows still waiting.
    resolved: usize,
}

/// Takes one batch, asks the plugin, applies the decisions.
fn round(dp: &Dataplane, sup: &Supervisor) -> Round {
    let reqs = dp.take_punts(BATCH);
    let taken = reqs.len();
    if taken == 0 {
        return Round::default();
    }
    let (current, stale) = split_current(reqs, sup.tables().sg().generation());
    if !stale.is_empty() {
        tracing::debug!(
            count = stale.len(),
            "punted flows from another table generation left to the punt timeout"
        );
    }
    let decisions = sup.decide(&current, Instant::now());
    let resolved =
        decided(&current, decisions).filter(|(r, d)| dp.resolve_punt(r, d.allow, &d.rule)).count();
    Round { taken, resolved }
}

/// Starts the thread that decides punted flows of `dp` with `policy`'s security-group plugin.
/// It ends when either is dropped.
pub fn spawn(dp: Weak<Dataplane>, policy: Weak<Policy>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("punt".into()).spawn(move || {
        loop {
            let (Some(d), Some(p)) = (dp.upgrade(), policy.upgrade()) else { return };
            let r = round(&d, p.supervisor());
            // No strong reference while waiting, so dropping either ends the loop.
            drop((d, p));
            if r.taken > 0 {
                tracing::trace!(taken = r.taken, resolved = r.resolved, "punt batch");
            }
            if r.taken < BATCH {
                std::thread::sleep(IDLE);
            }
        }
    })
}

/// Convenience for callers holding strong references.
pub fn spawn_for(dp: &Arc<Dataplane>, policy: &Arc<Policy>) -> std::io::Result<JoinHandle<()>> {
    spawn(Arc::downgrade(dp), Arc::downgrade(policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_dataplane::FlowKey;
    use isthmus_policy::{Limits, PolicyTables};
    use isthmus_tables::sg::{AttachmentId, Direction, RuleRef};

    fn req(port: u16, generation: u64) -> PuntRequest {
        PuntRequest {
            attachment: AttachmentId::of("lan0"),
            direction: Direction::Inbound,
            key: FlowKey {
                src: "10.70.1.2".parse().unwrap(),
                dst: "10.70.2.2".parse().unwrap(),
                proto: 6,
                src_port: 40000,
                dst_port: port,
            },
            rule: RuleRef::Rule(3),
            generation,
        }
    }

    #[test]
    fn requests_of_another_generation_are_not_asked_about() {
        let (current, stale) = split_current(vec![req(22, 7), req(80, 6), req(443, 7)], 7);
        let ports: Vec<u16> = current.iter().map(|r| r.key.dst_port).collect();
        assert_eq!(ports, [22, 443], "the requests at the current generation, in order");
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].key.dst_port, 80);
    }

    #[test]
    fn each_decision_goes_to_its_own_flow_and_undecided_flows_are_left() {
        let reqs = [req(22, 1), req(80, 1), req(443, 1)];
        let decisions = vec![
            Some(PuntDecision { allow: false, rule: "no-ssh".into() }),
            None,
            Some(PuntDecision { allow: true, rule: "web".into() }),
        ];
        let out: Vec<(u16, bool, String)> =
            decided(&reqs, decisions).map(|(r, d)| (r.key.dst_port, d.allow, d.rule)).collect();
        assert_eq!(out, [(22, false, "no-ssh".to_owned()), (443, true, "web".to_owned())]);
    }

    #[test]
    fn without_a_punt_capable_plugin_nothing_is_decided() {
        // The real supervisor with no security-group plugin: every flow keeps waiting for the
        // flow table's timeout default.
        let sup = Supervisor::new(Arc::new(PolicyTables::new()), Limits::default());
        let reqs = [req(22, 0), req(80, 0)];
        let decisions = sup.decide(&reqs, Instant::now());
        assert_eq!(decisions, [None, None]);
        assert_eq!(decided(&reqs, decisions).count(), 0);
    }
}

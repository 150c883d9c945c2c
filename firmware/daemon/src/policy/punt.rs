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

use std::sync::Weak;
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

/// Where punted flows wait: the dataplane's flow table.
pub trait PuntQueue: Send + Sync + 'static {
    /// Takes up to `max` flows waiting for a decision.
    fn take_punts(&self, max: usize) -> Vec<PuntRequest>;
    /// Applies a decision; false when the flow no longer waits.
    fn resolve_punt(&self, req: &PuntRequest, allow: bool, rule: &str) -> bool;
}

impl PuntQueue for Dataplane {
    fn take_punts(&self, max: usize) -> Vec<PuntRequest> {
        Dataplane::take_punts(self, max)
    }

    fn resolve_punt(&self, req: &PuntRequest, allow: bool, rule: &str) -> bool {
        Dataplane::resolve_punt(self, req, allow, rule)
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Round {
    /// Requests taken from the queue.
    taken: usize,
    /// Decisions applied to flows still waiting.
    resolved: usize,
}

/// Takes one batch, asks the plugin, applies the decisions.
fn round(q: &dyn PuntQueue, sup: &Supervisor) -> Round {
    let reqs = q.take_punts(BATCH);
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
        decided(&current, decisions).filter(|(r, d)| q.resolve_punt(r, d.allow, &d.rule)).count();
    Round { taken, resolved }
}

/// Starts the thread that decides punted flows of `dp` with `policy`'s security-group plugin.
/// It ends when either is dropped.
pub fn spawn(dp: Weak<Dataplane>, policy: Weak<Policy>) -> std::io::Result<JoinHandle<()>> {
    spawn_with(dp, policy, Policy::supervisor)
}

/// [`spawn`] for any queue and any owner of a supervisor (`supervisor` finds it in `owner`).
pub fn spawn_with<Q: PuntQueue, O: Send + Sync + 'static>(
    queue: Weak<Q>,
    owner: Weak<O>,
    supervisor: fn(&O) -> &Supervisor,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("punt".into()).spawn(move || {
        loop {
            let (Some(q), Some(o)) = (queue.upgrade(), owner.upgrade()) else { return };
            let r = round(&*q, supervisor(&o));
            // No strong reference while waiting, so dropping either ends the loop.
            drop((q, o));
            if r.taken > 0 {
                tracing::trace!(taken = r.taken, resolved = r.resolved, "punt batch");
            }
            if r.taken < BATCH {
                std::thread::sleep(IDLE);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_dataplane::FlowKey;
    use isthmus_policy::{Limits, PolicyTables};
    use isthmus_tables::sg::{AttachmentId, Direction, RuleRef};
    use std::sync::{Arc, Mutex};

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

    /// The real flow table the dataplane's workers shard, behind a lock, with a clock in ms.
    struct Flows {
        table: Mutex<isthmus_tables::flow::FlowTable>,
        start: Instant,
    }

    impl Flows {
        fn now(&self) -> u64 {
            self.start.elapsed().as_millis() as u64
        }
    }

    impl PuntQueue for Flows {
        fn take_punts(&self, max: usize) -> Vec<PuntRequest> {
            self.table.lock().unwrap().take_punts(max)
        }

        fn resolve_punt(&self, req: &PuntRequest, allow: bool, rule: &str) -> bool {
            let now = self.now();
            self.table.lock().unwrap().resolve(req, allow, rule, now)
        }
    }

    struct Monday0930;

    impl isthmus_policy::Clock for Monday0930 {
        fn now_unix(&self) -> u64 {
            // 2024-01-01 was a Monday; 09:30 UTC.
            1_704_067_200 + 9 * 3600 + 1800
        }
        fn utc_offset_minutes(&self) -> i32 {
            0
        }
    }

    /// The time-of-day plugin (built by `make plugins`), signed with a fresh key and loaded.
    fn time_of_day() -> Option<isthmus_policy::LoadedPlugin> {
        use isthmus_policy::{Capability, Hook, PluginHost};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(isthmus_policy::PLUGINS_DIR)
            .join("time_of_day.wasm");
        let Ok(wasm) = std::fs::read(&path) else {
            eprintln!("skipped: {} not built (make plugins)", path.display());
            return None;
        };
        let (secret, public) = isthmus_policy::generate_key().unwrap();
        let signed = isthmus_testkit::plugins::package_with(
            "time-of-day",
            "1.0.0",
            Hook::SecurityGroup,
            &[Capability::Clock],
            &wasm,
            &secret,
        );
        let verified = isthmus_policy::verify(&signed, &[public]).unwrap();
        let host = PluginHost::new(isthmus_policy::HostConfig::default()).unwrap();
        let clock: Arc<dyn isthmus_policy::Clock> = Arc::new(Monday0930);
        let config = "open = \"08:00\"\nclose = \"18:00\"\ndays = \"mon-fri\"\n";
        Some(host.load(&verified, config, Some(clock)).unwrap())
    }

    /// A flow matching a punt rule waits; the thread asks the time-of-day plugin (open on a
    /// Monday morning), the flow table then passes the flow by the plugin's rule, and the thread
    /// ends once the flow table is dropped.
    #[test]
    fn the_thread_applies_the_plugins_decision_and_ends_with_the_queue() {
        use isthmus_policy::{SgGroup, SgRule};
        use isthmus_tables::PortRange;
        use isthmus_tables::flow::{FlowConfig, FlowTable, Outcome, Reason};
        use isthmus_tables::sg::Action;

        let Some(plugin) = time_of_day() else { return };
        let sup = Arc::new(Supervisor::new(Arc::new(PolicyTables::new()), Limits::default()));
        assert!(plugin.has_punt());
        sup.install(plugin);
        let groups = vec![SgGroup {
            name: "ssh".into(),
            attach: vec!["lan0".into()],
            rules: vec![SgRule {
                id: "office-hours".into(),
                priority: 10,
                direction: Direction::Inbound,
                action: Action::Punt,
                protocol: Some(6),
                peer: "0.0.0.0/0".parse().unwrap(),
                ports: PortRange::single(22),
            }],
        }];
        sup.compile_sg(&groups, &[], &["lan0".into()], Instant::now()).unwrap();
        let table = sup.tables().sg();
        let flows = Arc::new(Flows {
            // A long punt timeout: a busy machine may take more than the default 200 ms to
            // schedule the thread, and the default verdict would then answer instead.
            table: Mutex::new(FlowTable::new(FlowConfig {
                punt_timeout_ms: 60_000,
                ..FlowConfig::default()
            })),
            start: Instant::now(),
        });
        let key = req(22, 0).key;
        let lan0 = AttachmentId::of("lan0");
        let first = flows.table.lock().unwrap().process(&table, lan0, Direction::Inbound, &key, 0);
        assert_eq!(first.outcome, Outcome::Pending, "the flow waits for the plugin");

        let thread = spawn_with(Arc::downgrade(&flows), Arc::downgrade(&sup), |s| s).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let verdict = loop {
            let now = flows.now();
            let v =
                flows.table.lock().unwrap().process(&table, lan0, Direction::Inbound, &key, now);
            if v.outcome != Outcome::Pending || Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(verdict.outcome, Outcome::Allow, "{verdict:?}");
        assert_eq!(verdict.reason, Reason::Punt("time-of-day:open".into()));

        drop(flows);
        thread.join().unwrap();
    }
}

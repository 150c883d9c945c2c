//! INFORMATIONAL requests (RFC 7296 §1.4): liveness checks, Delete, notifications.

use super::*;

impl Endpoint {
    pub(super) fn on_informational_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        let mut resp = Vec::new();
        let mut delete_ike = false;
        if payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::AUTHENTICATION_FAILED))
        {
            // §2.21.2: the initiator could not verify our AUTH; the SA is void.
            let cfg = self.sa_config(sa);
            self.fail(Explanation {
                tunnel: cfg.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                peer: sa.remote,
                exchange: ExchangeType::IKE_AUTH,
                cause: Cause::PeerRefused(NotifyType::AUTHENTICATION_FAILED),
                ours: cfg.map(|c| format!("identity {} with a pre-shared key", c.local_id)).unwrap_or_default(),
                theirs: None,
                suggestion: Some("the peer could not verify our AUTH: the pre-shared keys differ or the peer expects another identity".into()),
            });
            delete_ike = true;
        }
        let mut ours_deleted = Vec::new();
        for p in &payloads {
            let Payload::Delete(d) = p else { continue };
            if d.protocol == protocol::IKE {
                delete_ike = true;
            } else if d.protocol == protocol::ESP {
                for spi in &d.spis {
                    if let Some(i) = sa.children.iter().position(|c| c.spi_out == *spi) {
                        let c = sa.children.remove(i);
                        self.child_index.remove(&c.spi_in);
                        let reason = if c.state == ChildState::Rekeyed {
                            DownReason::Rekeyed
                        } else {
                            DownReason::DeletedByPeer
                        };
                        ours_deleted.push(c.spi_in);
                        self.child_down(sa, &c, reason);
                    }
                }
            }
        }
        if !ours_deleted.is_empty() {
            resp.push(Payload::Delete(Delete { protocol: protocol::ESP, spis: ours_deleted }));
        }
        self.respond(sa, ExchangeType::INFORMATIONAL, id, &resp);
        if delete_ike {
            self.release_pending_spis(sa);
            sa.out = None;
            sa.queue.clear();
            let reason =
                if sa.phase.is_rekeyed() { DownReason::Rekeyed } else { DownReason::DeletedByPeer };
            self.finish_later(sa, reason);
            sa.linger(now + self.config.half_open_timeout);
        }
    }
}

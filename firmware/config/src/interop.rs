//! The default proposals of cloud VPN gateways and IDC routers, read from the table in
//! docs/interop.md (compiled in), and which of them a tunnel's proposals can meet. The document
//! is the one place those defaults are written: `isthmus config validate` reports against it,
//! and the strongSwan interop test configures its peers from it.

use isthmus_ike::proposal::{EspProposal, IkeProposal, parse_esp_list, parse_ike_list};

use crate::Tunnel;

/// docs/interop.md, as built into this binary.
pub const DOCUMENT: &str = include_str!("../../../docs/interop.md");

/// One row of the table: a peer and its default proposals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDefaults {
    /// The peer, as the row names it.
    pub peer: String,
    /// Its default IKE and ESP proposals in strongSwan syntax (the "peer in the test" column);
    /// `None` when the row has none Isthmus could meet.
    pub defaults: Option<[String; 2]>,
    /// The Isthmus `ike_proposals` and `esp_proposals` that meet them.
    pub isthmus: Option<[String; 2]>,
    /// What `swanctl --list-sas` shows for the IKE SA and the CHILD SA.
    pub shown: Option<[String; 2]>,
    /// Whether `make test` proves the row (its last column starts with `yes`).
    pub tested: bool,
}

/// Every row of the table in [`DOCUMENT`].
pub fn peers() -> Vec<PeerDefaults> {
    parse(DOCUMENT)
}

/// The rows of a table with the columns of docs/interop.md: peer, defaults in words, source,
/// `peer IKE`; `peer ESP`, `ours IKE`; `ours ESP`, `shown IKE`; `shown ESP`, tested. Code spans
/// carry the values; a cell with fewer than two is `None`.
fn parse(text: &str) -> Vec<PeerDefaults> {
    let pair = |cell: &str| -> Option<[String; 2]> {
        let mut spans = cell.split('`').skip(1).step_by(2).map(str::to_owned);
        Some([spans.next()?, spans.next()?])
    };
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Peer "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let [peer, _, _, defaults, isthmus, shown, tested] = cells[..] else { return None };
            Some(PeerDefaults {
                peer: peer.to_owned(),
                defaults: pair(defaults),
                isthmus: pair(isthmus),
                shown: pair(shown),
                tested: tested.starts_with("yes"),
            })
        })
        .collect()
}

/// Whether proposal lists `ours` (IKE, ESP) and `theirs` share a suite: an IKE proposal, and an
/// ESP proposal that agrees on PFS too (what a CHILD SA rekey needs, RFC 7296 §1.3.1).
pub fn lists_meet(ours: [&[String]; 2], theirs: [&str; 2]) -> bool {
    let ike = |l: &[String]| l.iter().map(|p| IkeProposal::parse(p)).collect::<Result<Vec<_>, _>>();
    let esp = |l: &[String]| l.iter().map(|p| EspProposal::parse(p)).collect::<Result<Vec<_>, _>>();
    let (Ok(our_ike), Ok(our_esp)) = (ike(ours[0]), esp(ours[1])) else { return false };
    let (Ok(their_ike), Ok(their_esp)) = (parse_ike_list(theirs[0]), parse_esp_list(theirs[1]))
    else {
        return false;
    };
    let ike_ok = our_ike.iter().any(|o| their_ike.iter().any(|t| o.select(t).is_some()));
    let esp_ok = our_esp.iter().any(|o| their_esp.iter().any(|t| o.select(t, true).is_some()));
    ike_ok && esp_ok
}

/// The peers of docs/interop.md whose default proposals `tunnel` meets, and those it does not.
pub fn meets(tunnel: &Tunnel) -> (Vec<String>, Vec<String>) {
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for p in peers() {
        let Some([ike, esp]) = &p.defaults else { continue };
        let ours = [&tunnel.ike_proposals[..], &tunnel.esp_proposals[..]];
        if lists_meet(ours, [ike, esp]) {
            yes.push(p.peer);
        } else {
            no.push(p.peer);
        }
    }
    (yes, no)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn the_document_parses_and_each_row_meets_its_own_defaults() {
        let rows = peers();
        assert!(rows.len() >= 12, "{rows:#?}");
        assert!(rows.iter().filter(|r| r.tested).count() >= 10);
        for r in rows.iter().filter(|r| r.tested) {
            let d = r.defaults.as_ref().expect("a tested row names the peer's proposals");
            let i = r.isthmus.as_ref().expect("a tested row names the Isthmus proposals");
            assert!(
                lists_meet([&v(&i[0]), &v(&i[1])], [&d[0], &d[1]]),
                "{}: the Isthmus proposals of the row do not meet its defaults",
                r.peer
            );
        }
        let tencent = rows.iter().find(|r| r.peer.starts_with("Tencent")).unwrap();
        assert!(!tencent.tested && tencent.defaults.is_none());
    }

    #[test]
    fn a_cloud_default_list_meets_the_clouds_and_gcm_alone_does_not() {
        let cloud = [&v("aes128-sha256-modp2048")[..], &v("aes128-sha256-modp2048")[..]];
        let azure = ["aes256-sha256-modp1024", "aes256-sha256"];
        let huawei = ["aes128-sha256-modp2048", "aes128-sha256-modp2048"];
        assert!(lists_meet(cloud, huawei));
        // Azure wants modp1024 and no PFS.
        assert!(!lists_meet(cloud, azure));
        let gcm = [&v("aes256gcm16-prfsha256-x25519")[..], &v("aes256gcm16")[..]];
        assert!(!lists_meet(gcm, huawei));
    }
}

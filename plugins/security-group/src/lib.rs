//! The default security-group plugin (hook `security-group`): cloud semantics as documented in
//! [`isthmus_plugin_sdk::sg`] — stateful groups with priority-ordered allow/deny (inbound denied,
//! outbound allowed by default, as in AWS), stateless network ACLs in and out (denied by default).
//! It has no punt path: a `punt` rule in its input is refused, since nothing would decide it.

wit_bindgen::generate!({
    world: "security-group-plugin",
    path: "../../wit",
});

isthmus_plugin_sdk::sg_conversions!();

use exports::isthmus::policy::security_group::{Acl, Chain, Group, Guest};
use isthmus::policy::host::{Level, log};

struct Plugin;

impl Guest for Plugin {
    fn compile(groups: Vec<Group>, acls: Vec<Acl>) -> Result<Vec<Chain>, String> {
        let groups = sgconv::groups_in(groups);
        if let Some((g, r)) = groups.iter().find_map(|g| {
            g.rules.iter().find(|r| r.action == isthmus_plugin_sdk::sg::Act::Punt).map(|r| (g, r))
        }) {
            return Err(format!(
                "security group `{}` rule `{}` punts, but this plugin has no punt path; \
                 install a plugin that decides punted flows (for example `time-of-day`)",
                g.name, r.id
            ));
        }
        let chains = isthmus_plugin_sdk::sg::compile(&groups, &sgconv::acls_in(acls))?;
        log(Level::Debug, &format!("compiled {} chains", chains.len()));
        Ok(sgconv::chains_out(chains))
    }
}

export!(Plugin);

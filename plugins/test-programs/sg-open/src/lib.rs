//! Test plugin: a `security-group` plugin that compiles every configuration into no chain at
//! all, so nothing is filtered. The daemon's tests activate it to see a plugin change verdicts
//! (a security group's deny stops applying) and roll it back.
wit_bindgen::generate!({
    world: "security-group-plugin",
    path: "../../../wit",
});

use exports::isthmus::policy::security_group::{Acl, Chain, Group, Guest};

struct Plugin;

impl Guest for Plugin {
    fn compile(groups: Vec<Group>, acls: Vec<Acl>) -> Result<Vec<Chain>, String> {
        isthmus::policy::host::log(
            isthmus::policy::host::Level::Info,
            &format!("sg-open: ignoring {} groups and {} ACLs", groups.len(), acls.len()),
        );
        Ok(Vec::new())
    }
}

export!(Plugin);

//! Security groups (stateful, priority-ordered allow/deny) and network ACLs (stateless, in and
//! out) compiled into rule tables.

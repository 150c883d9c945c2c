//! The router core: a netlink reconciler that brings links, addresses, routes, rules and TUN
//! devices to the configured state, and the nftables host firewall programmed over netlink.

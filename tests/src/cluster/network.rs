//! The cluster network: a hub namespace holding a bridge, and one veth pair per member
//! namespace (every node, and the client) from the bridge to the member's `eth0`.
//!
//! Every link is created from inside the hub (`ip -n HUB link add … peer … netns MEMBER`),
//! so no interface ever exists in the root namespace, not even for a moment. Members get
//! one address each in the cluster's /24 (client `.2`, node *i* `.(10+i)`) and no default
//! route: traffic to anything outside the subnet fails with `ENETUNREACH` inside the
//! namespace instead of leaving it.

use std::net::Ipv4Addr;

use crate::error::Result;
use crate::netns::Netns;

/// The bridge inside the hub namespace.
pub const BRIDGE: &str = "br0";
/// Each member's end of its veth pair.
pub const MEMBER_IF: &str = "eth0";
/// Prefix length of the cluster subnet.
pub const PREFIX_LEN: u8 = 24;
/// Host part of the client's address.
const CLIENT_HOST: u8 = 2;
/// Node *i* (1-based) gets host part `NODE_HOST_BASE + i`.
const NODE_HOST_BASE: u8 = 10;

/// Address of the client namespace in `subnet`.
pub(crate) fn client_ip(subnet: Ipv4Addr) -> Ipv4Addr {
    host(subnet, CLIENT_HOST)
}

/// Address of node `index` (1-based, at most 200) in `subnet`.
pub(crate) fn node_ip(subnet: Ipv4Addr, index: usize) -> Ipv4Addr {
    let host_part = u8::try_from(index).map_or(u8::MAX, |i| i.saturating_add(NODE_HOST_BASE));
    host(subnet, host_part)
}

fn host(subnet: Ipv4Addr, host_part: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet.octets();
    Ipv4Addr::new(a, b, c, host_part)
}

/// A subnet `10.213.X.0` with X from the process id and a per-process counter.
pub(crate) fn default_subnet(pid: u32, counter: u64) -> Ipv4Addr {
    let x = (u64::from(pid).wrapping_mul(31).wrapping_add(counter)) % 256;
    Ipv4Addr::new(10, 213, u8::try_from(x).unwrap_or(0), 0)
}

/// Creates the bridge in the hub namespace and brings it up.
pub(crate) fn create_bridge(hub: &Netns) -> Result<()> {
    hub.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    hub.ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Joins `member` to the hub's bridge through a veth pair (hub end `port`, member end
/// `eth0` with address `ip`/24), all links up.
pub(crate) fn attach(hub: &Netns, member: &Netns, port: &str, ip: Ipv4Addr) -> Result<()> {
    hub.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        MEMBER_IF,
        "netns",
        member.name(),
    ])?;
    hub.ip(&["link", "set", port, "master", BRIDGE, "up"])?;
    let cidr = format!("{ip}/{PREFIX_LEN}");
    member.ip(&["addr", "add", &cidr, "dev", MEMBER_IF])?;
    member.ip(&["link", "set", MEMBER_IF, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let subnet = Ipv4Addr::new(10, 213, 7, 0);
        assert_eq!(client_ip(subnet), Ipv4Addr::new(10, 213, 7, 2));
        assert_eq!(node_ip(subnet, 4), Ipv4Addr::new(10, 213, 7, 14));
        assert_eq!(default_subnet(1, 0).octets()[3], 0);
        assert_ne!(default_subnet(100, 0), default_subnet(100, 1));
    }
}

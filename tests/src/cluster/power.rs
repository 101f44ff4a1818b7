//! Power-off by nftables: a node's namespace drops every packet, in and out, before
//! connection tracking or any socket sees it, so peers get silence (no RST, no FIN, no
//! ICMP): what a host whose power was cut looks like from the network.
//!
//! The rules live in one table inside the *node's* namespace (never the root one):
//! `inet` chains on the input, output and forward hooks at priority -500 (ahead of
//! conntrack at -200 and raw at -300), each with a counting `drop` rule and a drop policy;
//! optionally an `arp` table too. Powering on deletes the table. Before that, sockets the
//! killed process left behind (orphans in FIN-WAIT, whose FIN would otherwise go out the
//! moment the drop is lifted) are destroyed with `ss -K`, still under the drop, so the
//! node comes back with an empty network stack, like a rebooted host: a peer's old
//! connection is answered with RST.

use std::thread;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::netns::Netns;

/// Name of the power-off table (in the `inet` family, and in `arp` when ARP is dropped).
pub const POWEROFF_TABLE: &str = "diskio_harness_poweroff";
/// Hook priority of the drop chains: before raw (-300) and conntrack (-200).
const PRIORITY: i32 = -500;

/// The nft commands (one transaction) that cut the namespace off.
fn ruleset(drop_arp: bool) -> String {
    let t = POWEROFF_TABLE;
    let mut rules = format!("add table inet {t}; ");
    for hook in ["input", "output", "forward"] {
        rules.push_str(&format!(
            "add chain inet {t} {hook} {{ type filter hook {hook} priority {PRIORITY}; policy drop; }}; \
             add rule inet {t} {hook} counter drop; "
        ));
    }
    if drop_arp {
        rules.push_str(&format!("add table arp {t}; "));
        for hook in ["input", "output"] {
            rules.push_str(&format!(
                "add chain arp {t} {hook} {{ type filter hook {hook} priority 0; policy drop; }}; \
                 add rule arp {t} {hook} counter drop; "
            ));
        }
    }
    rules
}

/// Starts dropping every packet in `ns`.
pub(crate) fn cut(ns: &Netns, drop_arp: bool) -> Result<()> {
    ns.run_tool("nft", &[&ruleset(drop_arp)]).map(drop)
}

/// Stops dropping (deletes the table(s); absent ones are fine).
pub(crate) fn restore(ns: &Netns) -> Result<()> {
    for family in power_tables(ns)? {
        ns.run_tool("nft", &["delete", "table", &family, POWEROFF_TABLE])?;
    }
    Ok(())
}

/// Families (`inet`, `arp`) in which `ns` has the power-off table.
pub(crate) fn power_tables(ns: &Netns) -> Result<Vec<String>> {
    Ok(nft_tables(ns)?
        .into_iter()
        .filter(|(_, name)| name == POWEROFF_TABLE)
        .map(|(family, _)| family)
        .collect())
}

/// Every nftables table in `ns`, as `(family, name)`.
pub fn nft_tables(ns: &Netns) -> Result<Vec<(String, String)>> {
    let text = ns.run_tool("nft", &["list", "tables"])?;
    Ok(parse_tables(&text))
}

/// Every nftables table of the caller's own (e.g. the root) namespace.
pub fn nft_tables_here(timeout: Duration) -> Result<Vec<(String, String)>> {
    let text = crate::cmd::run("nft", &["list".as_ref(), "tables".as_ref()], timeout)?;
    Ok(parse_tables(&text))
}

fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name)) => {
                    Some((family.to_owned(), name.to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Packets dropped so far by the power-off table of `ns` (sum of its counters), `None`
/// when the node is not powered off.
pub(crate) fn dropped_packets(ns: &Netns) -> Result<Option<u64>> {
    if !power_tables(ns)?.iter().any(|f| f == "inet") {
        return Ok(None);
    }
    let json = ns.run_tool("nft", &["-j", "list", "table", "inet", POWEROFF_TABLE])?;
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| HarnessError::Command {
            cmd: "nft -j list table".into(),
            status: None,
            stderr: format!("unparsable JSON: {e}"),
        })?;
    let mut total = 0;
    sum_counters(&value, &mut total);
    Ok(Some(total))
}

fn sum_counters(value: &serde_json::Value, total: &mut u64) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(packets) = map
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(|p| p.as_u64())
            {
                *total += packets;
            }
            map.values().for_each(|v| sum_counters(v, total));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| sum_counters(v, total)),
        _ => {}
    }
}

/// TCP sockets of `ns` that could still send (everything but TIME-WAIT), as `ss` lines.
fn live_tcp_sockets(ns: &Netns) -> Result<Vec<String>> {
    let text = ns.run_tool("ss", &["-H", "-t", "-a", "-n"])?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("TIME-WAIT"))
        .map(str::to_owned)
        .collect())
}

/// Destroys every TCP socket left in `ns` (`ss -K`: the kernel's reset goes out under the
/// drop, so nobody sees it) and waits until none remains.
pub(crate) fn destroy_sockets(ns: &Netns, timeout: Duration, poll: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = live_tcp_sockets(ns)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: format!(
                    "sockets of {} to be destroyed within {timeout:?}; left: {left:?}",
                    ns.name()
                ),
            });
        }
        ns.run_tool("ss", &["-H", "-K", "-t", "-a", "-n"])?;
        thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_covers_every_hook() {
        let rules = ruleset(false);
        for hook in ["input", "output", "forward"] {
            assert!(rules.contains(&format!("hook {hook} priority -500; policy drop;")));
        }
        assert!(!rules.contains("arp"));
        assert!(ruleset(true).contains("add table arp"));
    }

    #[test]
    fn parses_table_listing() {
        let text = "table inet diskio_harness_poweroff\ntable arp diskio_harness_poweroff\n";
        assert_eq!(
            parse_tables(text),
            [
                ("inet".to_owned(), POWEROFF_TABLE.to_owned()),
                ("arp".to_owned(), POWEROFF_TABLE.to_owned())
            ]
        );
    }
}

//! Resharding by hand: moving one slot, keys and all, to another master,
//! so that clients see `MOVED`.

use super::RedisCluster;
use super::options::DEFAULT_READY_TIMEOUT;
use super::slots::check_slot;
use crate::error::TestkitError;
use crate::resp::{Connection, Reply, command, expect_ok, unexpected};

/// `MIGRATE`'s own limit, and a bit more for the reply to arrive.
const MIGRATE_TIMEOUT_MS: u32 = 5000;
const MIGRATE_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Keys asked for per `CLUSTER GETKEYSINSLOT`, and moved per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;

impl RedisCluster {
    /// Moves `slot`, with its keys, from its current master to master `to`,
    /// the way an operator's resharding does: `CLUSTER SETSLOT IMPORTING` on
    /// the target, `MIGRATING` on the source, `MIGRATE` of every key, then
    /// `CLUSTER SETSLOT NODE` on every master. Returns when every master's
    /// `CLUSTER SLOTS` names the new owner, so a client that cached the old
    /// map gets `MOVED` from the old owner on its next command for the slot,
    /// and every master knows every master's config epoch, so the slot can
    /// be moved again at once.
    ///
    /// A no-op when `to` already serves the slot. Every master must be running.
    pub fn migrate_slot(&self, slot: u16, to: usize) -> Result<(), TestkitError> {
        check_slot(slot)?;
        if to >= self.nodes.len() {
            return Err(TestkitError::Other(format!(
                "there is no master {to}: the cluster has {}",
                self.nodes.len()
            )));
        }
        let from = self.node_for_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let slot_arg = slot.to_string();
        let (src, dst) = (self.nodes[from].port(), self.nodes[to].port());
        // With `tls-cluster yes` a node's MIGRATE speaks TLS: it must go to
        // the target's TLS port.
        let migrate_port = self.tls_ports.as_ref().map_or(dst, |ports| ports[to]);
        expect_ok(
            dst,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "IMPORTING",
                &self.ids[from],
            ],
        )?;
        expect_ok(
            src,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &self.ids[to]],
        )?;

        let batch = MIGRATE_BATCH.to_string();
        let dst_port = migrate_port.to_string();
        loop {
            let keys = match command(src, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, &batch])? {
                Reply::Array(Some(keys)) => keys,
                other => return Err(unexpected(src, "CLUSTER GETKEYSINSLOT", &other)),
            };
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<Vec<u8>> = [
                "MIGRATE",
                "127.0.0.1",
                &dst_port,
                "",
                "0",
                &MIGRATE_TIMEOUT_MS.to_string(),
                "KEYS",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
            for key in keys {
                match key {
                    Reply::Bulk(Some(key)) => args.push(key),
                    other => return Err(unexpected(src, "CLUSTER GETKEYSINSLOT", &other)),
                }
            }
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            match Connection::open(src, MIGRATE_REPLY_TIMEOUT)?.call(&args)? {
                Reply::Status(_) => {}
                other => return Err(unexpected(src, "MIGRATE", &other)),
            }
        }

        // The target first: it bumps its config epoch, so its claim wins everywhere.
        let order = std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from));
        for i in order {
            expect_ok(
                self.nodes[i].port(),
                &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &self.ids[to]],
            )?;
        }

        // Every master names the new owner, and every master knows every
        // master's new config epoch. Until the epochs have spread, a gossip
        // message the old owner sent before it let go of the slot still wins
        // over the new owner's claim wherever the new owner's old, lower
        // epoch is known, and hands the slot back to the old owner there; a
        // slot moved again before that can end with two masters each
        // sending clients to the other.
        self.wait_for(DEFAULT_READY_TIMEOUT, |cluster| {
            for node in &cluster.nodes {
                let owner = cluster.owner_seen_by(node.port(), slot)?;
                if owner != to {
                    return Ok(Err((
                        node.port(),
                        format!("master {owner} still owns slot {slot}, not master {to}"),
                    )));
                }
            }
            Ok(cluster.epochs_settled())
        })
    }
}

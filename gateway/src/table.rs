//! The connection table: which live WebSocket connection holds which agent, so pushes from the
//! owner reach that connection and only it.

use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// A frame for one connection's writer: an encoded ServerToAgent (without the WS header).
pub type Push = Vec<u8>;

/// Agents (instance uids) one connection may speak for.
pub const MAX_AGENTS_PER_CONNECTION: usize = 64;

/// What [`ConnectionTable::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The agent already spoke on the connection.
    Known,
    Added,
    /// The connection speaks for as many agents as it may.
    Full,
}

#[derive(Debug, Default)]
pub struct ConnectionTable {
    conns: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The agents speaking on the connection (usually one).
    instance_uids: Vec<Vec<u8>>,
    tx: mpsc::Sender<Push>,
}

impl ConnectionTable {
    pub fn insert(&self, connection_id: u64, tx: mpsc::Sender<Push>) {
        let entry = Entry {
            instance_uids: Vec::new(),
            tx,
        };
        self.conns.lock().insert(connection_id, entry);
    }

    /// Records that an agent speaks on the connection (known from its first message, and added
    /// to when the server assigns a new instance_uid), up to [`MAX_AGENTS_PER_CONNECTION`].
    pub fn bind(&self, connection_id: u64, instance_uid: &[u8]) -> Bind {
        let mut conns = self.conns.lock();
        let Some(e) = conns.get_mut(&connection_id) else {
            // Not a live connection (it is being closed): nothing to record.
            return Bind::Known;
        };
        if e.instance_uids.iter().any(|u| u == instance_uid) {
            Bind::Known
        } else if e.instance_uids.len() >= MAX_AGENTS_PER_CONNECTION {
            Bind::Full
        } else {
            e.instance_uids.push(instance_uid.to_vec());
            Bind::Added
        }
    }

    /// The agent does not speak on the connection after all (its owner refused it).
    pub fn unbind(&self, connection_id: u64, instance_uid: &[u8]) {
        if let Some(e) = self.conns.lock().get_mut(&connection_id) {
            e.instance_uids.retain(|u| u != instance_uid);
        }
    }

    /// Forgets the connection; returns the agents that spoke on it.
    pub fn remove(&self, connection_id: u64) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .remove(&connection_id)
            .map(|e| e.instance_uids)
            .unwrap_or_default()
    }

    /// Queues `push` on the connection if it is live and `instance_uid` speaks on it. A full
    /// queue means the agent is not reading: the push is dropped (desired state is re-sent on the
    /// agent's next report anyway).
    pub fn deliver(&self, connection_id: u64, instance_uid: &[u8], push: Push) -> bool {
        match self.conns.lock().get(&connection_id) {
            Some(e) if e.instance_uids.iter().any(|u| u == instance_uid) => {
                e.tx.try_send(push).is_ok()
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_only_to_the_bound_agent_on_that_connection() {
        let table = ConnectionTable::default();
        let (tx, mut rx) = mpsc::channel(4);
        table.insert(1, tx);
        assert!(!table.deliver(1, b"a", vec![1]), "not bound yet");
        assert_eq!(table.bind(1, b"a"), Bind::Added);
        assert_eq!(table.bind(1, b"a"), Bind::Known);
        assert!(table.deliver(1, b"a", vec![2]));
        assert!(!table.deliver(1, b"b", vec![3]), "another agent's push");
        assert!(!table.deliver(2, b"a", vec![4]), "an older connection");
        assert_eq!(rx.recv().await, Some(vec![2]));
        // A second agent on the same connection (a uid assigned mid-session): both reachable.
        table.bind(1, b"b");
        assert!(table.deliver(1, b"b", vec![6]) && table.deliver(1, b"a", vec![7]));
        table.unbind(1, b"b");
        assert!(!table.deliver(1, b"b", vec![8]));
        for n in 1..MAX_AGENTS_PER_CONNECTION {
            table.bind(1, &n.to_be_bytes());
        }
        assert_eq!(table.bind(1, b"one too many"), Bind::Full);
        let agents = table.remove(1);
        assert_eq!(agents.len(), MAX_AGENTS_PER_CONNECTION);
        assert_eq!(agents[0], b"a");
        assert!(!table.deliver(1, b"a", vec![5]));
        assert!(table.is_empty());
    }
}

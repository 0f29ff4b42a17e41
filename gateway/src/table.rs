//! The connection table: which live WebSocket connection holds which agent, so pushes from the
//! owner reach that connection and only it.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// A frame for one connection's writer: an encoded ServerToAgent (without the WS header).
pub type Push = Vec<u8>;

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnectionTable {
    pub fn insert(&self, connection_id: u64, tx: mpsc::Sender<Push>) {
        let entry = Entry {
            instance_uids: Vec::new(),
            tx,
        };
        lock(&self.conns).insert(connection_id, entry);
    }

    /// Records that an agent speaks on the connection (known from its first message, and added
    /// to when the server assigns a new instance_uid).
    pub fn bind(&self, connection_id: u64, instance_uid: &[u8]) {
        if let Some(e) = lock(&self.conns).get_mut(&connection_id)
            && !e.instance_uids.iter().any(|u| u == instance_uid)
        {
            e.instance_uids.push(instance_uid.to_vec());
        }
    }

    /// The agent does not speak on the connection after all (its owner refused it).
    pub fn unbind(&self, connection_id: u64, instance_uid: &[u8]) {
        if let Some(e) = lock(&self.conns).get_mut(&connection_id) {
            e.instance_uids.retain(|u| u != instance_uid);
        }
    }

    pub fn remove(&self, connection_id: u64) {
        lock(&self.conns).remove(&connection_id);
    }

    /// Queues `push` on the connection if it is live and `instance_uid` speaks on it. A full
    /// queue means the agent is not reading: the push is dropped (desired state is re-sent on the
    /// agent's next report anyway).
    pub fn deliver(&self, connection_id: u64, instance_uid: &[u8], push: Push) -> bool {
        match lock(&self.conns).get(&connection_id) {
            Some(e) if e.instance_uids.iter().any(|u| u == instance_uid) => {
                e.tx.try_send(push).is_ok()
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.conns).len()
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
        table.bind(1, b"a");
        assert!(table.deliver(1, b"a", vec![2]));
        assert!(!table.deliver(1, b"b", vec![3]), "another agent's push");
        assert!(!table.deliver(2, b"a", vec![4]), "an older connection");
        assert_eq!(rx.recv().await, Some(vec![2]));
        // A second agent on the same connection (a uid assigned mid-session): both reachable.
        table.bind(1, b"b");
        assert!(table.deliver(1, b"b", vec![6]) && table.deliver(1, b"a", vec![7]));
        table.unbind(1, b"b");
        assert!(!table.deliver(1, b"b", vec![8]));
        table.remove(1);
        assert!(!table.deliver(1, b"a", vec![5]));
        assert!(table.is_empty());
    }
}

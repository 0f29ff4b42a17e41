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
    instance_uid: Vec<u8>,
    tx: mpsc::Sender<Push>,
}

impl ConnectionTable {
    pub fn insert(&self, connection_id: u64, tx: mpsc::Sender<Push>) {
        let entry = Entry {
            instance_uid: Vec::new(),
            tx,
        };
        self.conns
            .lock()
            .expect("table lock")
            .insert(connection_id, entry);
    }

    /// Records which agent speaks on the connection (known after its first message, and changed
    /// when the server assigns a new instance_uid).
    pub fn bind(&self, connection_id: u64, instance_uid: &[u8]) {
        let mut conns = self.conns.lock().expect("table lock");
        if let Some(e) = conns.get_mut(&connection_id) {
            e.instance_uid = instance_uid.to_vec();
        }
    }

    pub fn remove(&self, connection_id: u64) {
        self.conns
            .lock()
            .expect("table lock")
            .remove(&connection_id);
    }

    /// Queues `push` on the connection if it is live and still held by `instance_uid`. A full
    /// queue means the agent is not reading: the push is dropped (desired state is re-sent on the
    /// agent's next report anyway).
    pub fn deliver(&self, connection_id: u64, instance_uid: &[u8], push: Push) -> bool {
        let conns = self.conns.lock().expect("table lock");
        match conns.get(&connection_id) {
            Some(e) if e.instance_uid == instance_uid => e.tx.try_send(push).is_ok(),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().expect("table lock").len()
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
        table.remove(1);
        assert!(!table.deliver(1, b"a", vec![5]));
        assert!(table.is_empty());
    }
}

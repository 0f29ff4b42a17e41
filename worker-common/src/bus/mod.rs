//! The Bus: subject-addressed publish, subscribe and request/reply between Flotilla's roles.
//! [`NatsBus`] in a cluster; [`InProcessBus`] when one process runs every role. Subjects and
//! wildcards follow NATS (`*` one token, `>` the rest), so both implementations route the same names.

mod inproc;
mod measured;
mod nats;
mod types;

pub use inproc::InProcessBus;
pub use measured::Measured as MeasuredBus;
pub use nats::NatsBus;
pub use types::{
    Answers, Bus, BusError, BusMessage, Incoming, Reply, Subscription, request_with_retry,
    retry_request, subject_matches,
};

//! [`Measured`]: any [`Store`], with each call timed and counted by operation
//! (`flotilla_store_seconds`, `flotilla_store_errors_total`) and traced as a `store.<op>` span.

use super::tally::AgentCounts;
use super::types::{
    AuditEntry, AuditOf, AuditPage, AuditQuery, Claimed, Deadline, Doc, Fence, KeptParts,
    ShardFilter, Store, StoreError, StoredConfig, Touch,
};
use async_trait::async_trait;
use flotilla_proto::bus::AgentRecord;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

type Labels = Vec<(&'static str, &'static str)>;

/// A store whose every call is measured.
pub struct Measured {
    inner: Arc<dyn Store>,
    backend: &'static str,
    seconds: Family<Labels, Histogram>,
    errors: Family<Labels, Counter>,
}

impl Measured {
    /// Wraps `inner` (`backend`: "redis" or "embedded", a label of every series).
    pub fn new(inner: Arc<dyn Store>, backend: &'static str, registry: &mut Registry) -> Self {
        let seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let errors = Family::<Labels, Counter>::default();
        let r = registry.sub_registry_with_prefix("flotilla_store");
        r.register(
            "seconds",
            "Store calls by backend and operation, timed (failed calls included)",
            seconds.clone(),
        );
        r.register(
            "errors",
            "Store calls that failed, by backend, operation and kind (io, corrupt, fenced)",
            errors.clone(),
        );
        Self {
            inner,
            backend,
            seconds,
            errors,
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let span = crate::telemetry::traces::child(|| {
            tracing::debug_span!(
                "store",
                otel.name = %format_args!("store.{op}"),
                otel.kind = "client",
                db.system = self.backend,
                db.operation = op,
            )
        });
        let started = Instant::now();
        let result = f.instrument(span).await;
        self.observe(op, started, &result);
        result
    }

    fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T, StoreError>) {
        self.seconds
            .get_or_create(&vec![("backend", self.backend), ("op", op)])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let kind = match e {
                StoreError::Io(_) => "io",
                StoreError::Corrupt(_) => "corrupt",
                StoreError::Fenced { .. } => "fenced",
            };
            self.errors
                .get_or_create(&vec![("backend", self.backend), ("op", op), ("kind", kind)])
                .inc();
        }
    }
}

#[async_trait]
impl Store for Measured {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        self.call("get_agent", self.inner.get_agent(uid)).await
    }

    async fn save_agent_keeping(
        &self,
        fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
        kept: KeptParts,
    ) -> Result<bool, StoreError> {
        let f = self
            .inner
            .save_agent_keeping(fence, record, deadline, audit, kept);
        self.call("save_agent", f).await
    }

    async fn touch_agent(
        &self,
        fence: Fence,
        touch: Touch,
        deadline: Deadline,
    ) -> Result<bool, StoreError> {
        let f = self.inner.touch_agent(fence, touch, deadline);
        self.call("touch_agent", f).await
    }

    fn holds_agents_in_memory(&self) -> bool {
        self.inner.holds_agents_in_memory()
    }

    async fn delete_agent(
        &self,
        fence: Fence,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let f = self.inner.delete_agent(fence, uid, audit);
        self.call("delete_agent", f).await
    }

    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        self.call("visit_agents", self.inner.visit_agents(shards, f))
            .await
    }

    async fn agent_counts(&self) -> Result<Option<AgentCounts>, StoreError> {
        self.call("agent_counts", self.inner.agent_counts()).await
    }

    async fn count_shard(&self, fence: Fence) -> Result<bool, StoreError> {
        self.call("count_shard", self.inner.count_shard(fence))
            .await
    }

    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Claimed, StoreError> {
        let f = self.inner.claim_due(fence, now_unix_ms, retry_ms);
        self.call("claim_due", f).await
    }

    async fn put_config(
        &self,
        config: StoredConfig,
        activate: bool,
        audit: AuditOf<'_>,
    ) -> Result<StoredConfig, StoreError> {
        let f = self.inner.put_config(config, activate, audit);
        self.call("put_config", f).await
    }

    async fn import_config(
        &self,
        config: StoredConfig,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let f = self.inner.import_config(config, audit);
        self.call("import_config", f).await
    }

    async fn activate_config(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let f = self.inner.activate_config(name, version);
        self.call("activate_config", f).await
    }

    async fn deactivate_config(
        &self,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let f = self.inner.deactivate_config(name, audit);
        self.call("deactivate_config", f).await
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        self.call("list_configs", self.inner.list_configs()).await
    }

    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError> {
        self.call("config_versions", self.inner.config_versions(name))
            .await
    }

    async fn put_doc(
        &self,
        collection: &str,
        id: &str,
        expected_revision: u64,
        json: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let f = self
            .inner
            .put_doc(collection, id, expected_revision, json, audit);
        self.call("put_doc", f).await
    }

    async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Doc>, StoreError> {
        self.call("get_doc", self.inner.get_doc(collection, id))
            .await
    }

    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError> {
        self.call("list_docs", self.inner.list_docs(collection))
            .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        self.call("append_audit", self.inner.append_audit(entry))
            .await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.call("query_audit", self.inner.query_audit(query))
            .await
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::super::embedded::EmbeddedStore;
    use super::super::types::DEFAULT_AUDIT_RETENTION;
    use super::*;

    #[tokio::test]
    async fn calls_are_timed_and_failures_counted_by_operation() {
        let dir = tempfile::tempdir().unwrap();
        let inner = EmbeddedStore::open_with(dir.path(), DEFAULT_AUDIT_RETENTION).unwrap();
        let mut registry = Registry::default();
        let store = Measured::new(Arc::new(inner), "embedded", &mut registry);
        assert_eq!(store.get_agent(Uuid::nil()).await.unwrap(), None);
        let fenced: Result<(), _> = Err(StoreError::Fenced { shard: 3, epoch: 9 });
        store.observe("save_agent", Instant::now(), &fenced);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"flotilla_store_seconds_count{backend="embedded",op="get_agent"} 1"#,
            r#"flotilla_store_seconds_count{backend="embedded",op="save_agent"} 1"#,
            r#"flotilla_store_errors_total{backend="embedded",op="save_agent",kind="fenced"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"errors_total{backend="embedded",op="get_agent""#),
            "{text}"
        );
    }
}

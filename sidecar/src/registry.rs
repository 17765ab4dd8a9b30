//! Writes this node makes to the catalog: its instances (from the API, from
//! `--service`, restored from disk), its definitions and its node metadata,
//! each stamped, applied locally and gossiped. Registrations are saved to
//! the data dir on the blocking pool before the write is acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::{Definition, Health, Instance, NodeMeta, RecordBody, RecordKey};
use mesh_proto::coordinate::Coordinate;
use mesh_proto::names::{validate_id, validate_service_name};
use mesh_proto::NodeId;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::catalog::{encode_broadcast, CatalogStore};
use crate::core::health::HealthBook;
use crate::membership::Membership;
use crate::persist::DataDir;

/// This node's writer of catalog records.
pub struct Registry {
    node_id: NodeId,
    catalog: Arc<CatalogStore>,
    membership: Membership,
    data: DataDir,
    /// Instances registered through the API, as saved in the data dir.
    saved: Mutex<Vec<RegisterInstance>>,
    /// `--service NAME=PORT` flags.
    flag_services: Vec<(String, u16)>,
    /// `--zone`, published in node metadata.
    zone: Option<String>,
    /// The one rule for this node's instances' health (declared + traffic).
    health: std::sync::Mutex<HealthBook>,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is wrong (400).
    BadInput,
    /// Valid, but it collides with another node's record (409).
    Conflict,
    /// It could not be made durable on this node, so it was not made (507).
    NotDurable,
}

/// A write the registry refuses, with the reason and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Invalid {
    /// What is wrong.
    pub error: String,
    /// What to do.
    pub hint: String,
    /// Which kind of refusal.
    pub refusal: Refusal,
}

fn invalid(error: impl Into<String>, hint: impl Into<String>) -> Invalid {
    Invalid {
        error: error.into(),
        hint: hint.into(),
        refusal: Refusal::BadInput,
    }
}

fn not_durable(what: &str, error: &anyhow::Error) -> Invalid {
    Invalid {
        error: format!("{what} was not saved to the data dir: {error:#}"),
        hint: format!(
            "{}, then retry; nothing was changed",
            error
                .chain()
                .find_map(|cause| cause.downcast_ref::<std::io::Error>())
                .map_or(
                    "free space or fix permissions in --data-dir",
                    crate::persist::write_advice
                )
        ),
        refusal: Refusal::NotDurable,
    }
}

/// Longest deployment id, as for ids (it appears in listings and logs).
const MAX_DEPLOYMENT_ID: usize = 256;

impl Registry {
    /// A registry writing as `node_id`, with the registrations saved in `data`.
    pub fn new(
        node_id: NodeId,
        catalog: Arc<CatalogStore>,
        membership: Membership,
        data: DataDir,
        flag_services: Vec<(String, u16)>,
        zone: Option<String>,
    ) -> anyhow::Result<Self> {
        let saved = data.registrations()?;
        Ok(Self {
            node_id,
            catalog,
            membership,
            data,
            saved: Mutex::new(saved),
            flag_services,
            zone,
            health: std::sync::Mutex::default(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The catalog this registry writes to.
    pub fn catalog(&self) -> &Arc<CatalogStore> {
        &self.catalog
    }

    /// Writes a record as this node and gossips it.
    pub async fn publish(&self, key: RecordKey, body: RecordBody) {
        let record = self.catalog.write(key, body);
        self.gossip(&record).await;
    }

    /// Queues a record of ours on gossip (anti-entropy carries it when it
    /// is too large).
    async fn gossip(&self, record: &mesh_proto::Record) {
        match encode_broadcast(record) {
            Some(item) => self.membership.broadcast(item).await,
            None => {
                info!(key = ?record.key, "record too large for gossip; anti-entropy will spread it")
            }
        }
    }

    /// Publishes this node's metadata (CPU, memory, zone, version, coordinate).
    pub async fn publish_node_meta(&self, coordinate: Coordinate) {
        let meta = NodeMeta {
            node: self.node_id.clone(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mb: total_memory_mb(),
            zone: self.zone.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            coordinate: Some(coordinate),
        };
        self.publish(
            RecordKey::Node(self.node_id.clone()),
            RecordBody::Node(meta),
        )
        .await;
    }

    /// Saves the registrations on the blocking pool (the write fsyncs).
    async fn save(&self, saved: &[RegisterInstance]) -> anyhow::Result<()> {
        let data = self.data.clone();
        let saved = saved.to_vec();
        tokio::task::spawn_blocking(move || data.save_registrations(&saved))
            .await
            .map_err(|e| anyhow::anyhow!("the save task failed: {e}"))?
    }

    /// Turns a registration request into the instance it describes.
    pub fn instance_from(&self, request: &RegisterInstance) -> Result<Instance, Invalid> {
        validate_service_name(&request.service).map_err(|e| {
            invalid(
                e.to_string(),
                "service names are DNS labels, for example \"billing-api\"",
            )
        })?;
        let address: SocketAddr = match (&request.address, request.port) {
            (Some(address), _) => match address.parse::<SocketAddr>() {
                Ok(parsed) if parsed.port() != 0 => parsed,
                _ => {
                    return Err(invalid(
                        format!("address {address:?} is not IP:PORT with a port from 1 to 65535"),
                        "pass \"address\": \"127.0.0.1:8080\", or just \"port\": 8080",
                    ))
                }
            },
            (None, Some(0)) => {
                return Err(invalid(
                    "port 0 is not a port an instance can listen on",
                    "pass the port the service listens on, from 1 to 65535",
                ))
            }
            (None, Some(port)) => SocketAddr::from(([127, 0, 0, 1], port)),
            _ => {
                return Err(invalid(
                    "the instance has no port or address",
                    "pass \"port\" (the service listens on 127.0.0.1:PORT) or \"address\"",
                ))
            }
        };
        let id = match &request.id {
            Some(id) => {
                validate_id("instance id", id)
                    .map_err(|e| invalid(e.to_string(), "omit \"id\" to have one generated"))?;
                // Clients resolve "." and ".." away in URL paths, so such an
                // instance could not be deregistered with DELETE /v1/instances/ID.
                if id.bytes().all(|b| b == b'.') {
                    return Err(invalid(
                        format!("invalid instance id {id:?}: it is only dots"),
                        "use a letter or digit in the id, or omit \"id\" to have one generated",
                    ));
                }
                id.clone()
            }
            // Deterministic, so registering the same thing twice is idempotent.
            None => format!("{}-{}-{}", request.service, self.node_id, address.port()),
        };
        // Instance ids are cluster-wide keys: taking one that another node owns
        // would overwrite its instance everywhere.
        let owner = self.instance_owner(&id);
        if let Some(owner) = owner.filter(|owner| *owner != self.node_id) {
            return Err(Invalid {
                error: format!("instance id {id:?} is already registered on node {owner}"),
                hint: "choose another \"id\", or omit it to have one generated".to_owned(),
                refusal: Refusal::Conflict,
            });
        }
        if request
            .deployment_id
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DEPLOYMENT_ID)
        {
            return Err(invalid(
                format!("deployment_id is longer than {MAX_DEPLOYMENT_ID} characters"),
                "shorten the deployment id",
            ));
        }
        for tag in &request.tags {
            if tag.len() > 256 {
                return Err(invalid(
                    "a tag is longer than 256 characters",
                    "shorten the tag",
                ));
            }
        }
        if request.tags.len() > 64 {
            return Err(invalid("more than 64 tags", "use at most 64 tags"));
        }
        Ok(Instance {
            id,
            service: request.service.clone(),
            node: self.node_id.clone(),
            address,
            deployment_id: request.deployment_id.clone(),
            tags: request.tags.clone(),
            health: request.health.unwrap_or(Health::Passing),
        })
    }

    /// The node that owns instance `id`, if the catalog knows it.
    fn instance_owner(&self, id: &str) -> Option<NodeId> {
        if self.catalog.snapshot().local_instance(id).is_some() {
            return Some(self.node_id.clone());
        }
        self.catalog
            .read(|c| c.instance(id).map(|i| i.node.clone()))
    }

    /// Registers an instance on this node; `persist` keeps it across restarts.
    pub async fn register(
        &self,
        request: RegisterInstance,
        persist: bool,
    ) -> Result<Instance, Invalid> {
        let mut instance = self.instance_from(&request)?;
        instance.health = self.health_book().declare(&instance.id, instance.health);
        if persist {
            let mut saved = self.saved.lock().await;
            let mut next: Vec<RegisterInstance> = saved
                .iter()
                .filter(|r| {
                    self.instance_from(r)
                        .map(|i| i.id != instance.id)
                        .unwrap_or(false)
                })
                .cloned()
                .collect();
            next.push(RegisterInstance {
                id: Some(instance.id.clone()),
                ..request
            });
            // Durable first: an acknowledged registration survives a crash,
            // and a refused one is not in the catalog at all.
            if let Err(e) = self.save(&next).await {
                warn!(error = %e, "cannot persist registrations; refusing the registration");
                return Err(not_durable("the registration", &e));
            }
            *saved = next;
        }
        self.publish(
            RecordKey::Instance(instance.id.clone()),
            RecordBody::Instance(instance.clone()),
        )
        .await;
        Ok(instance)
    }

    /// Removes an instance of this node. Ok(false) if it is not ours or
    /// unknown; refused when the removal cannot be saved (it would come
    /// back at the next start).
    pub async fn deregister(&self, id: &str) -> Result<bool, Invalid> {
        if self.catalog.snapshot().local_instance(id).is_none() {
            return Ok(false);
        }
        {
            let mut saved = self.saved.lock().await;
            let next: Vec<RegisterInstance> = saved
                .iter()
                .filter(|r| r.id.as_deref() != Some(id))
                .cloned()
                .collect();
            if next.len() != saved.len() {
                if let Err(e) = self.save(&next).await {
                    warn!(error = %e, "cannot persist registrations; refusing the deregistration");
                    return Err(not_durable("the deregistration", &e));
                }
                *saved = next;
            }
        }
        self.health_book().forget(id);
        self.publish(RecordKey::Instance(id.to_owned()), RecordBody::Tombstone)
            .await;
        Ok(true)
    }

    /// Writes a definition (any node may); answers once it is in this
    /// node's saved snapshot.
    pub async fn put_definition(&self, definition: Definition) -> Result<(), Invalid> {
        self.write_durably(
            RecordKey::Definition(definition.name.clone()),
            RecordBody::Definition(definition),
            "the definition",
        )
        .await
    }

    /// Applies a write, saves the catalog snapshot, and only then gossips
    /// it. If the save fails the write stays in this node's memory only
    /// (not gossiped; anti-entropy may still carry it) and the caller hears
    /// that it is not durable.
    async fn write_durably(
        &self,
        key: RecordKey,
        body: RecordBody,
        what: &str,
    ) -> Result<(), Invalid> {
        let record = self.catalog.write(key, body);
        if let Err(e) = crate::sync::save_snapshot(&self.catalog, &self.data).await {
            warn!(error = %e, "cannot save the catalog snapshot; {what} is not durable");
            return Err(not_durable(what, &e));
        }
        self.gossip(&record).await;
        Ok(())
    }

    /// What is wrong with the data dir, while writes to it fail.
    pub fn storage_problem(&self) -> Option<String> {
        self.data.problem()
    }

    /// Re-registers what was saved, and the `--service` flags, at start.
    pub async fn restore(&self) {
        let saved = self.saved.lock().await.clone();
        for request in saved {
            if let Err(e) = self.register(request, false).await {
                warn!(error = %e, "skipping a saved registration that is no longer valid");
            }
        }
        for (service, port) in &self.flag_services {
            let request = RegisterInstance {
                service: service.clone(),
                port: Some(*port),
                address: None,
                id: None,
                deployment_id: None,
                tags: vec!["flag".to_owned()],
                health: None,
            };
            match self.register(request, false).await {
                Ok(instance) => {
                    info!(id = %instance.id, address = %instance.address, "registered --service instance")
                }
                Err(e) => warn!(error = %e, "cannot register --service instance"),
            }
        }
        // Our own instances from an earlier run that nobody re-registered are stale.
        let live: Vec<String> = self
            .catalog
            .snapshot()
            .local_instances()
            .map(|i| i.id.clone())
            .collect();
        let kept: Vec<String> = {
            let saved = self.saved.lock().await;
            saved.iter().filter_map(|r| r.id.clone()).collect()
        };
        for id in live {
            let from_flag = self
                .flag_services
                .iter()
                .any(|(service, port)| id == format!("{service}-{}-{port}", self.node_id));
            if !kept.contains(&id) && !from_flag {
                self.publish(RecordKey::Instance(id), RecordBody::Tombstone)
                    .await;
            }
        }
    }

    /// Deregisters the `--service` instances (clean stop).
    pub async fn deregister_flag_services(&self) {
        for (service, port) in &self.flag_services {
            let id = format!("{service}-{}-{port}", self.node_id);
            if let Err(e) = self.deregister(&id).await {
                warn!(instance = %id, error = %e, "cannot deregister a --service instance");
            }
        }
    }

    /// Deletes a definition (a tombstone that wins over older writes);
    /// answers once the delete is in this node's saved snapshot.
    pub async fn delete_definition(&self, name: &str) -> Result<(), Invalid> {
        self.write_durably(
            RecordKey::Definition(name.to_owned()),
            RecordBody::Tombstone,
            "the delete",
        )
        .await
    }

    fn health_book(&self) -> std::sync::MutexGuard<'_, HealthBook> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Traffic found one of this node's instances refusing connections (or
    /// accepting them again); publishes the health that results. None if
    /// it is not ours, else whether its health changed.
    pub async fn observe_refusing(&self, id: &str, refusing: bool) -> Option<bool> {
        let mut instance = self.catalog.snapshot().local_instance(id).cloned()?;
        let health = self.health_book().observe_refusing(id, refusing);
        if instance.health == health {
            return Some(false);
        }
        instance.health = health;
        self.publish(
            RecordKey::Instance(instance.id.clone()),
            RecordBody::Instance(instance),
        )
        .await;
        Some(true)
    }
}

fn total_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

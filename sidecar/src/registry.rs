//! Writes this node makes to the catalog: its instances (from the API, from
//! `--service`, restored from disk) and its definitions, each stamped,
//! applied locally and gossiped.

use std::net::SocketAddr;

use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::{Definition, Health, Instance, RecordBody, RecordKey};
use mesh_proto::names::{validate_id, validate_service_name};
use tracing::{info, warn};

use crate::agent::Agent;
use crate::catalog::encode_broadcast;

/// A registration the API refuses, with the reason and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Invalid {
    /// What is wrong.
    pub error: String,
    /// What to do.
    pub hint: String,
    /// True when the request is valid but collides with another node's record.
    pub conflict: bool,
}

fn invalid(error: impl Into<String>, hint: impl Into<String>) -> Invalid {
    Invalid {
        error: error.into(),
        hint: hint.into(),
        conflict: false,
    }
}

/// Longest deployment id, as for ids (it appears in listings and logs).
const MAX_DEPLOYMENT_ID: usize = 256;

/// Writes a record as this node and gossips it.
pub async fn publish(agent: &Agent, key: RecordKey, body: RecordBody) {
    let record = agent.catalog.write(key, body);
    match encode_broadcast(&record) {
        Some(item) => agent.membership.broadcast(item).await,
        None => {
            info!(key = ?record.key, "record too large for gossip; anti-entropy will spread it")
        }
    }
}

/// Turns a registration request into the instance it describes.
pub fn instance_from(agent: &Agent, request: &RegisterInstance) -> Result<Instance, Invalid> {
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
        None => format!("{}-{}-{}", request.service, agent.node_id(), address.port()),
    };
    // Instance ids are cluster-wide keys: taking one that another node owns
    // would overwrite its instance everywhere.
    let owner = agent
        .catalog
        .read(|c| c.instance(&id).map(|i| i.node.clone()));
    if let Some(owner) = owner.filter(|owner| owner != agent.node_id()) {
        return Err(Invalid {
            error: format!("instance id {id:?} is already registered on node {owner}"),
            hint: "choose another \"id\", or omit it to have one generated".to_owned(),
            conflict: true,
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
        node: agent.node_id().clone(),
        address,
        deployment_id: request.deployment_id.clone(),
        tags: request.tags.clone(),
        health: request.health.unwrap_or(Health::Passing),
    })
}

/// Registers an instance on this node; `persist` keeps it across restarts.
pub async fn register(
    agent: &Agent,
    request: RegisterInstance,
    persist: bool,
) -> Result<Instance, Invalid> {
    let instance = instance_from(agent, &request)?;
    if persist {
        let mut saved = agent.registrations.lock().await;
        saved.retain(|r| {
            instance_from(agent, r)
                .map(|i| i.id != instance.id)
                .unwrap_or(false)
        });
        saved.push(RegisterInstance {
            id: Some(instance.id.clone()),
            ..request
        });
        if let Err(e) = agent.data.save_registrations(&saved) {
            warn!(error = %e, "cannot persist registrations; the instance is registered until restart");
        }
    }
    publish(
        agent,
        RecordKey::Instance(instance.id.clone()),
        RecordBody::Instance(instance.clone()),
    )
    .await;
    Ok(instance)
}

/// Removes an instance of this node. Returns false if it is not ours or unknown.
pub async fn deregister(agent: &Agent, id: &str) -> bool {
    let ours = agent
        .catalog
        .read(|c| c.instance(id).is_some_and(|i| i.node == *agent.node_id()));
    if !ours {
        return false;
    }
    {
        let mut saved = agent.registrations.lock().await;
        let before = saved.len();
        saved.retain(|r| r.id.as_deref() != Some(id));
        if saved.len() != before {
            if let Err(e) = agent.data.save_registrations(&saved) {
                warn!(error = %e, "cannot persist registrations");
            }
        }
    }
    publish(
        agent,
        RecordKey::Instance(id.to_owned()),
        RecordBody::Tombstone,
    )
    .await;
    true
}

/// Writes a definition (any node may).
pub async fn put_definition(agent: &Agent, definition: Definition) {
    publish(
        agent,
        RecordKey::Definition(definition.name.clone()),
        RecordBody::Definition(definition),
    )
    .await;
}

/// Re-registers what was saved, and the `--service` flags, at start.
pub async fn restore(agent: &Agent) {
    let saved = agent.registrations.lock().await.clone();
    for request in saved {
        if let Err(e) = register(agent, request, false).await {
            warn!(error = %e, "skipping a saved registration that is no longer valid");
        }
    }
    for (service, port) in &agent.config.services {
        let request = RegisterInstance {
            service: service.clone(),
            port: Some(*port),
            address: None,
            id: None,
            deployment_id: None,
            tags: vec!["flag".to_owned()],
            health: None,
        };
        match register(agent, request, false).await {
            Ok(instance) => {
                info!(id = %instance.id, address = %instance.address, "registered --service instance")
            }
            Err(e) => warn!(error = %e, "cannot register --service instance"),
        }
    }
    // Our own instances from an earlier run that nobody re-registered are stale.
    let live: Vec<String> = agent.catalog.read(|c| {
        c.instances()
            .filter(|i| i.node == *agent.node_id())
            .map(|i| i.id.clone())
            .collect()
    });
    let kept: Vec<String> = {
        let saved = agent.registrations.lock().await;
        saved.iter().filter_map(|r| r.id.clone()).collect()
    };
    for id in live {
        let from_flag = agent
            .config
            .services
            .iter()
            .any(|(service, port)| id == format!("{service}-{}-{port}", agent.node_id()));
        if !kept.contains(&id) && !from_flag {
            publish(agent, RecordKey::Instance(id), RecordBody::Tombstone).await;
        }
    }
}

/// Deregisters the `--service` instances (clean stop).
pub async fn deregister_flag_services(agent: &Agent) {
    for (service, port) in &agent.config.services {
        let id = format!("{service}-{}-{port}", agent.node_id());
        deregister(agent, &id).await;
    }
}

/// Deletes a definition (a tombstone that wins over older writes).
pub async fn delete_definition(agent: &Agent, name: &str) {
    publish(
        agent,
        RecordKey::Definition(name.to_owned()),
        RecordBody::Tombstone,
    )
    .await;
}

//! TCP services the local service reaches through the mesh: the
//! `--tcp NAME=LISTEN_ADDR` flags and the `[[tcp]]` tables of the config
//! file, checked and resolved into [`TcpSpec`]s.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use mesh_proto::names::validate_service_name;
use serde::Deserialize;

/// One `[[tcp]]` table of the config file.
///
/// ```toml
/// [[tcp]]
/// service = "redis"
/// listen = "127.0.0.1:6380"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFile {
    /// The TCP service's name in the catalog.
    pub service: String,
    /// Local address to accept its connections on (IP:PORT).
    pub listen: String,
}

/// A resolved TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSpec {
    /// The service every accepted connection goes to.
    pub service: String,
    /// Where the agent listens for it.
    pub listen: SocketAddr,
}

/// Parses `NAME=LISTEN_ADDR` of `--tcp`.
pub fn parse_tcp_flag(text: &str) -> anyhow::Result<TcpSpec> {
    let (service, listen) = text.split_once('=').with_context(|| {
        format!("--tcp {text:?} must be NAME=LISTEN_ADDR, for example redis=127.0.0.1:6380")
    })?;
    spec(service, listen).map_err(|e| anyhow::anyhow!("--tcp {text:?}: {e}"))
}

fn spec(service: &str, listen: &str) -> anyhow::Result<TcpSpec> {
    validate_service_name(service).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = listen.parse::<SocketAddr>().map_err(|_| {
        anyhow::anyhow!("listen address {listen:?} is not IP:PORT, for example 127.0.0.1:6380")
    })?;
    Ok(TcpSpec {
        service: service.to_owned(),
        listen,
    })
}

/// Every TCP listener of the flags and the file; two on one address (other
/// than port 0) are an error.
pub fn resolve(flags: &[String], tables: &[TcpFile]) -> anyhow::Result<Vec<TcpSpec>> {
    let mut specs = flags
        .iter()
        .map(|f| parse_tcp_flag(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for table in tables {
        specs.push(
            spec(&table.service, &table.listen)
                .map_err(|e| anyhow::anyhow!("[[tcp]] table for {:?}: {e}", table.service))?,
        );
    }
    for (i, a) in specs.iter().enumerate() {
        if a.listen.port() != 0 && specs[..i].iter().any(|b| b.listen == a.listen) {
            bail!(
                "two TCP services listen on {}; give each --tcp its own address",
                a.listen
            );
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_tables_parse_or_explain() {
        let specs = resolve(
            &["redis=127.0.0.1:6380".to_owned()],
            &[TcpFile {
                service: "pg".to_owned(),
                listen: "127.0.0.1:5433".to_owned(),
            }],
        )
        .expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].service, "redis");
        assert_eq!(specs[1].listen.port(), 5433);
        assert!(parse_tcp_flag("redis").is_err());
        assert!(parse_tcp_flag("redis=6380").is_err());
        assert!(parse_tcp_flag("Redis=127.0.0.1:6380").is_err());
        let twice = ["a=127.0.0.1:7000".to_owned(), "b=127.0.0.1:7000".to_owned()];
        assert!(resolve(&twice, &[]).is_err());
    }

    #[test]
    fn tcp_tables_of_the_config_file_resolve_beside_the_flags() {
        let file: super::super::AgentArgs = toml::from_str(
            "dev = true\n[[tcp]]\nservice = \"redis\"\nlisten = \"127.0.0.1:6380\"\n",
        )
        .expect("a [[tcp]] table parses");
        let flags = super::super::AgentArgs {
            tcp: vec!["pg=127.0.0.1:5433".to_owned()],
            ..Default::default()
        };
        let config = flags.merge(file).into_config().expect("resolves");
        let names: Vec<&str> = config.tcp.iter().map(|t| t.service.as_str()).collect();
        assert_eq!(names, ["pg", "redis"]);
        let unknown: Result<super::super::AgentArgs, _> =
            toml::from_str("[[tcp]]\nservice = \"redis\"\nport = 6380\n");
        assert!(unknown.is_err(), "a misspelt key is refused");
    }
}

//! Checks of the files under `deploy/`.
//!
//! Docker and Kubernetes do not run on the development machines or in CI, so
//! the deployment files are kept honest here instead: every YAML and JSON file
//! parses, every shell script passes `bash -n`, the Grafana dashboard queries
//! only the metric names that DESIGN.md makes a contract, and the files agree
//! with each other (ports, names, paths, flags). Pure file checks: no network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

#[path = "common/dashboard.rs"]
mod dashboard;
use dashboard::{dashboard_metric_names, dashboard_panels, load_dashboard, metric_names_in};

/// `gossamer agent` flags (DESIGN.md "The agent", plus those `gossamer agent
/// --help` adds); a variable `GOSSAMER_<FLAG>` must name one of them.
const AGENT_FLAGS: &[&str] = &[
    "node-id",
    "bind",
    "advertise",
    "join",
    "psk",
    "psk-file",
    "tls-ca",
    "tls-cert",
    "tls-key",
    "admin-listen",
    "proxy-listen",
    "metrics-listen",
    "data-dir",
    "service",
    "profile",
    "zone",
    "allow-estimated-rtt",
    "dev",
    "debug-link-delay",
    "debug-link-drop",
    "config",
    "admin-token",
    "admin-token-file",
    "max-connections",
    "header-read-timeout-ms",
];

/// Default ports of the agent (DESIGN.md): QUIC, admin, proxy, metrics.
const QUIC_PORT: u16 = 4300;
const ADMIN_PORT: u16 = 4200;
const PROXY_PORT: u16 = 4201;
const METRICS_PORT: u16 = 9102;

/// Grafana's own variables, which a dashboard may use without defining them.
const GRAFANA_BUILTIN_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

// === files ===

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo_dir().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn read_deploy(rel: &str) -> String {
    read(&deploy_dir().join(rel))
}

/// Every file under `deploy/` whose name ends with one of `suffixes`, sorted.
fn deploy_files(suffixes: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, suffixes, out);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if suffixes.iter().any(|s| name.ends_with(s)) {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), suffixes, &mut out);
    out.sort();
    out
}

/// All documents of a (possibly multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .collect()
}

/// The single document of a YAML file under `deploy/`, with `<<` merge keys applied.
fn load_yaml(rel: &str) -> Yaml {
    let mut docs = yaml_documents(&deploy_dir().join(rel));
    assert_eq!(docs.len(), 1, "{rel} should hold exactly one YAML document");
    let mut doc = docs.remove(0);
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: bad merge key: {e}"));
    doc
}

/// Follows a path of mapping keys and sequence indices ("spec.template.0").
fn at<'a>(value: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = value;
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        };
        cur = next.unwrap_or_else(|| panic!("missing `{path}` (at `{key}`)"));
    }
    cur
}

fn str_at<'a>(value: &'a Yaml, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` should be a string"))
}

fn seq(value: &Yaml) -> &[Yaml] {
    value.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` is not host:port"))
}

/// The flag a `GOSSAMER_*` variable stands for: `GOSSAMER_PSK_FILE` → `psk-file`.
fn flag_of_env(var: &str) -> Option<String> {
    var.strip_prefix("GOSSAMER_")
        .map(|rest| rest.to_ascii_lowercase().replace('_', "-"))
}

/// `$name` and `${name}` references in a string.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        if len > 0 {
            vars.insert(body[..len].to_owned());
        }
    }
    vars
}

// === systemd ===

/// `Key=value` lines of a unit file, by key; repeated keys keep every value.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            settings
                .entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    settings
}

/// `GOSSAMER_*` names assigned in an env file, commented-out examples included.
fn env_file_variables(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| k.starts_with("GOSSAMER_") && !k.contains(' '))
        .map(str::to_owned)
        .collect()
}

// === kubernetes ===

/// The pod spec of a Deployment or DaemonSet manifest.
fn pod_spec(manifest: &Yaml) -> &Yaml {
    at(manifest, "spec.template.spec")
}

/// Containers and init containers of a pod spec.
fn pod_containers(spec: &Yaml) -> Vec<&Yaml> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k))
        .flat_map(seq)
        .collect()
}

/// The container named `gossamer` in a pod spec.
fn agent_container(spec: &Yaml) -> &Yaml {
    pod_containers(spec)
        .into_iter()
        .find(|c| c.get("name").and_then(Yaml::as_str) == Some("gossamer"))
        .expect("a container named gossamer")
}

/// Literal `value`s of a container's `env` list, by name.
fn container_env(container: &Yaml) -> BTreeMap<String, String> {
    seq(at(container, "env"))
        .iter()
        .filter_map(|e| {
            Some((
                e.get("name")?.as_str()?.to_owned(),
                e.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The number a probe's `port` names: a number, or a named container port.
fn probe_port(container: &Yaml, port: &Yaml) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("probe port is a number or a name");
    seq(at(container, "ports"))
        .iter()
        .find(|p| p.get("name").and_then(Yaml::as_str) == Some(name))
        .and_then(|p| p.get("containerPort")?.as_u64())
        .unwrap_or_else(|| {
            panic!("probe names port `{name}`, which the container does not declare")
        })
}

const WORKLOADS: &[&str] = &["kubernetes/deployment.yaml", "kubernetes/daemonset.yaml"];

// === tests: every file parses ===

#[test]
fn every_yaml_file_parses() {
    let files = deploy_files(&[".yaml", ".yml"]);
    assert!(
        files.len() >= 10,
        "expected the compose, kubernetes, prometheus and grafana YAML files, found {files:?}"
    );
    for path in files {
        let docs = yaml_documents(&path);
        assert!(
            !docs.is_empty(),
            "{} holds no YAML document",
            path.display()
        );
        for mut doc in docs {
            assert!(
                doc.is_mapping(),
                "{}: every document should be a mapping",
                path.display()
            );
            doc.apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
        }
    }
}

#[test]
fn every_json_file_parses() {
    let files = deploy_files(&[".json"]);
    assert!(!files.is_empty(), "expected the Grafana dashboard");
    for path in files {
        serde_json::from_str::<Json>(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    }
}

#[test]
fn every_shell_script_passes_bash_n() {
    let files = deploy_files(&[".sh"]);
    assert!(!files.is_empty(), "expected local-cluster.sh");
    for path in files {
        let out = Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("run bash -n");
        assert!(
            out.status.success(),
            "bash -n {} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            read(&path).contains("set -euo pipefail"),
            "{} should `set -euo pipefail`",
            path.display()
        );
    }
}

// === tests: dashboard ===

#[test]
fn metric_name_extraction_folds_histogram_series() {
    let names = metric_names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(gossamer_proxy_request_duration_seconds_bucket{x="gossamer_no"}[5m]))) / gossamer_members"#,
    );
    let expected: BTreeSet<String> = [
        "gossamer_proxy_request_duration_seconds",
        "gossamer_no",
        "gossamer_members",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    assert!(metric_names_in("my_gossamer_thing + $gossamer_var").is_empty());
}

#[test]
fn dashboard_queries_only_contract_metrics() {
    let used = dashboard_metric_names(&load_dashboard());
    // The first-wave contract, plus the second wave's DNS queries and the
    // standard process metrics.
    let contract: BTreeSet<String> = sidecar::metrics::DESIGN_CONTRACT
        .iter()
        .chain([sidecar::metrics::DNS_QUERIES].iter())
        .chain(sidecar::metrics::PROCESS.iter())
        .map(|s| s.to_string())
        .collect();
    let unknown: Vec<_> = used.difference(&contract).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries metrics that DESIGN.md does not define: {unknown:?}"
    );
}

#[test]
fn dashboard_shows_every_contract_metric() {
    let used = dashboard_metric_names(&load_dashboard());
    let missing: Vec<_> = sidecar::metrics::DESIGN_CONTRACT
        .iter()
        .filter(|m| !used.contains(**m))
        .collect();
    assert!(missing.is_empty(), "no dashboard panel shows {missing:?}");
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard = load_dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion should be a current one"
    );
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());

    let variables: BTreeMap<&str, &str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        variables.get("DS_PROMETHEUS"),
        Some(&"datasource"),
        "a datasource variable DS_PROMETHEUS"
    );
    assert_eq!(
        variables.get("instance"),
        Some(&"query"),
        "an `instance` variable"
    );
    assert_eq!(
        variables.get("service"),
        Some(&"query"),
        "a `service` variable"
    );

    let mut ids = BTreeSet::new();
    for panel in dashboard_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
                && grid["h"].as_u64().is_some(),
            "panel {title:?} needs a gridPos within 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title:?} datasource"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: target without expr"));
            assert!(
                refs.insert(target["refId"].as_str().unwrap_or("")),
                "panel {title:?}: duplicate refId"
            );
            assert!(
                !metric_names_in(expr).is_empty(),
                "panel {title:?} queries no gossamer metric: {expr}"
            );
            for var in variables_in(expr) {
                assert!(
                    variables.contains_key(var.as_str())
                        || GRAFANA_BUILTIN_VARIABLES.contains(&var.as_str()),
                    "panel {title:?} uses undefined variable ${var}"
                );
            }
        }
    }
}

// === tests: kubernetes ===

#[test]
fn kubernetes_probes_hit_health_on_a_reachable_admin_port() {
    for rel in WORKLOADS {
        let manifest = load_yaml(rel);
        let agent = agent_container(pod_spec(&manifest));
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = at(agent, &format!("{probe}.httpGet"));
            assert_eq!(str_at(get, "path"), "/v1/health", "{rel}: {probe} path");
            assert_eq!(
                probe_port(agent, at(get, "port")),
                u64::from(ADMIN_PORT),
                "{rel}: {probe} port"
            );
        }
        // The kubelet probes the pod IP: a loopback admin API would fail every probe.
        let env = container_env(agent);
        let admin = env
            .get("GOSSAMER_ADMIN_LISTEN")
            .unwrap_or_else(|| panic!("{rel}: set GOSSAMER_ADMIN_LISTEN"));
        assert!(
            !admin.starts_with("127."),
            "{rel}: admin API on loopback cannot be probed"
        );
        assert_eq!(port_of(admin), ADMIN_PORT, "{rel}: admin port");
    }
}

#[test]
fn kubernetes_agents_join_through_the_headless_service() {
    let service = load_yaml("kubernetes/service-headless.yaml");
    let namespace = str_at(&load_yaml("kubernetes/kustomization.yaml"), "namespace").to_owned();
    assert_eq!(
        str_at(&service, "spec.clusterIP"),
        "None",
        "the peers service must be headless"
    );
    assert_eq!(
        at(&service, "spec.publishNotReadyAddresses").as_bool(),
        Some(true)
    );
    let port = seq(at(&service, "spec.ports"))
        .iter()
        .find(|p| p.get("protocol").and_then(Yaml::as_str) == Some("UDP"))
        .expect("a UDP port on the peers service");
    assert_eq!(at(port, "port").as_u64(), Some(u64::from(QUIC_PORT)));
    let expected_join = format!(
        "{}.{namespace}.svc.cluster.local:{QUIC_PORT}",
        str_at(&service, "metadata.name")
    );
    let selector = at(&service, "spec.selector")
        .as_mapping()
        .expect("selector");

    for rel in WORKLOADS {
        let manifest = load_yaml(rel);
        assert_eq!(
            str_at(&manifest, "metadata.namespace"),
            namespace,
            "{rel}: namespace"
        );
        let labels = at(&manifest, "spec.template.metadata.labels")
            .as_mapping()
            .expect("labels");
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{rel}: pod lacks the peers service's selector label {k:?}"
            );
        }
        let agent = agent_container(pod_spec(&manifest));
        let env = container_env(agent);
        assert_eq!(
            env.get("GOSSAMER_JOIN"),
            Some(&expected_join),
            "{rel}: GOSSAMER_JOIN"
        );
        assert_eq!(
            port_of(&env["GOSSAMER_BIND"]),
            QUIC_PORT,
            "{rel}: bind port"
        );
        let advertise = &env["GOSSAMER_ADVERTISE"];
        assert_eq!(port_of(advertise), QUIC_PORT, "{rel}: advertise port");
        // GOSSAMER_ADVERTISE must use a variable defined earlier from the downward API.
        let var = advertise
            .strip_prefix("$(")
            .and_then(|s| s.split_once(')'))
            .map(|(v, _)| v);
        let var =
            var.unwrap_or_else(|| panic!("{rel}: GOSSAMER_ADVERTISE should be $(VAR):{QUIC_PORT}"));
        let field = seq(at(agent, "env"))
            .iter()
            .find(|e| e.get("name").and_then(Yaml::as_str) == Some(var))
            .map(|e| str_at(e, "valueFrom.fieldRef.fieldPath"));
        assert!(
            matches!(field, Some("status.podIP" | "status.hostIP")),
            "{rel}: ${var} should come from status.podIP"
        );
        for name in env.keys() {
            if let Some(flag) = flag_of_env(name) {
                assert!(
                    AGENT_FLAGS.contains(&flag.as_str()),
                    "{rel}: {name} names no agent flag"
                );
            }
        }
    }
}

#[test]
fn kubernetes_pods_use_the_secret_and_run_locked_down() {
    let secret = load_yaml("kubernetes/secret.yaml");
    let secret_name = str_at(&secret, "metadata.name");
    assert!(
        at(&secret, "stringData").get("GOSSAMER_PSK").is_some(),
        "secret.yaml holds GOSSAMER_PSK"
    );

    for rel in WORKLOADS {
        let manifest = load_yaml(rel);
        let spec = pod_spec(&manifest);
        assert_eq!(
            at(spec, "securityContext.runAsNonRoot").as_bool(),
            Some(true),
            "{rel}: runAsNonRoot"
        );
        let agent = agent_container(spec);
        let uses_secret = seq(at(agent, "envFrom")).iter().any(|e| {
            e.get("secretRef")
                .and_then(|s| s.get("name"))
                .and_then(Yaml::as_str)
                == Some(secret_name)
        });
        assert!(
            uses_secret,
            "{rel}: the agent should take its env from secret {secret_name}"
        );
        assert_eq!(
            container_env(agent)
                .get("GOSSAMER_DATA_DIR")
                .map(String::as_str),
            Some("/var/lib/gossamer"),
            "{rel}: GOSSAMER_DATA_DIR"
        );
        assert!(
            seq(at(agent, "volumeMounts"))
                .iter()
                .any(|m| str_at(m, "mountPath") == "/var/lib/gossamer"),
            "{rel}: a volume for the data dir (the root filesystem is read-only)"
        );
        for container in pod_containers(spec) {
            let name = str_at(container, "name");
            assert_eq!(
                at(container, "securityContext.readOnlyRootFilesystem").as_bool(),
                Some(true),
                "{rel}: container {name} readOnlyRootFilesystem"
            );
            assert_eq!(
                at(container, "securityContext.allowPrivilegeEscalation").as_bool(),
                Some(false)
            );
            assert!(
                at(container, "resources.requests").is_mapping(),
                "{rel}: {name} resource requests"
            );
            assert!(
                at(container, "resources.limits").is_mapping(),
                "{rel}: {name} resource limits"
            );
        }
    }
}

#[test]
fn kustomization_lists_existing_manifests() {
    let text = read_deploy("kubernetes/kustomization.yaml");
    let kustomization = load_yaml("kubernetes/kustomization.yaml");
    let resources: Vec<&str> = seq(at(&kustomization, "resources"))
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for resource in &resources {
        assert!(
            deploy_dir().join("kubernetes").join(resource).is_file(),
            "kustomization lists missing {resource}"
        );
    }
    // Every manifest is either applied or named (commented out) with a reason.
    for path in deploy_files(&[".yaml"]) {
        if path.parent() != Some(&deploy_dir().join("kubernetes")) {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        if name != "kustomization.yaml" {
            assert!(
                text.contains(name),
                "kustomization.yaml does not mention {name}"
            );
        }
    }
}

// === tests: systemd ===

#[test]
fn systemd_unit_is_hardened_and_stops_cleanly() {
    let settings = unit_settings(&read_deploy("systemd/gossamer.service"));
    let one = |key: &str| -> &str {
        settings
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("gossamer.service lacks {key}="))
    };
    assert!(
        settings.contains_key("User") || one("DynamicUser") == "yes",
        "User= or DynamicUser=yes"
    );
    assert_eq!(one("StateDirectory"), "gossamer");
    assert_eq!(one("Restart"), "on-failure");
    assert!(!one("RestartSec").is_empty());
    assert!(
        one("ExecStart").contains(" agent ")
            && one("ExecStart").contains("--data-dir /var/lib/gossamer")
    );
    assert_eq!(
        one("EnvironmentFile").trim_start_matches('-'),
        "/etc/gossamer/gossamer.env"
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(
        one("CapabilityBoundingSet"),
        "",
        "no capabilities: every port is above 1024"
    );
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 65536));
    assert_eq!(
        one("KillSignal"),
        "SIGTERM",
        "SIGTERM makes the agent leave the cluster"
    );
    assert!(!one("TimeoutStopSec").is_empty());
}

#[test]
fn systemd_env_example_documents_every_variable() {
    let vars = env_file_variables(&read_deploy("systemd/gossamer.env.example"));
    for required in [
        "GOSSAMER_NODE_ID",
        "GOSSAMER_BIND",
        "GOSSAMER_ADVERTISE",
        "GOSSAMER_JOIN",
        "GOSSAMER_PSK_FILE",
        "GOSSAMER_ADMIN_LISTEN",
        "GOSSAMER_PROXY_LISTEN",
        "GOSSAMER_METRICS_LISTEN",
        "GOSSAMER_DATA_DIR",
        "GOSSAMER_PROFILE",
        "GOSSAMER_SERVICE",
    ] {
        assert!(
            vars.contains(required),
            "gossamer.env.example does not document {required}"
        );
    }
    for var in vars {
        let flag = flag_of_env(&var).expect("GOSSAMER_ prefix");
        assert!(
            AGENT_FLAGS.contains(&flag.as_str()),
            "gossamer.env.example: {var} names no agent flag"
        );
    }
}

// === tests: compose, prometheus, grafana ===

#[test]
fn compose_file_references_what_exists() {
    let compose = load_yaml("compose.yaml");
    let services = at(&compose, "services").as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for agent in ["gossamer-a", "gossamer-b", "gossamer-c"] {
        assert!(names.contains(agent), "compose.yaml lacks {agent}");
    }

    for (name, service) in services {
        let name = name.as_str().expect("service name");
        if let Some(env_file) = service.get("env_file").and_then(Yaml::as_str) {
            let example = deploy_dir().join(format!("{env_file}.example"));
            assert!(
                example.is_file(),
                "{name}: env_file {env_file} has no {env_file}.example to copy"
            );
            assert!(
                read(&example).contains("GOSSAMER_PSK="),
                "{env_file}.example should hold GOSSAMER_PSK"
            );
        }
        for volume in service.get("volumes").map(seq).unwrap_or(&[]) {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or("");
            if source.starts_with("./") {
                assert!(
                    deploy_dir().join(source).exists(),
                    "{name}: volume source {source} is missing"
                );
            }
        }
        if let Some(mode) = service.get("network_mode").and_then(Yaml::as_str) {
            let target = mode.strip_prefix("service:").unwrap_or(mode);
            assert!(
                names.contains(target),
                "{name}: network_mode names unknown service {target}"
            );
        }

        let Some(env) = service.get("environment") else {
            continue;
        };
        let env_str = |key: &str| env.get(key).and_then(Yaml::as_str);
        for key in env
            .as_mapping()
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(Yaml::as_str)
        {
            if let Some(flag) = flag_of_env(key) {
                assert!(
                    AGENT_FLAGS.contains(&flag.as_str()),
                    "{name}: {key} names no agent flag"
                );
            }
        }
        if let Some(join) = env_str("GOSSAMER_JOIN") {
            for peer in join.split(',') {
                let (host, port) = peer.rsplit_once(':').expect("host:port");
                assert!(names.contains(host), "{name}: joins unknown service {host}");
                assert_eq!(
                    port.parse::<u16>().ok(),
                    Some(QUIC_PORT),
                    "{name}: join port"
                );
            }
        }
        if let Some(advertise) = env_str("GOSSAMER_ADVERTISE") {
            let ip = advertise.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
            let fixed = service
                .get("networks")
                .and_then(|n| n.get("mesh"))
                .and_then(|m| m.get("ipv4_address"));
            assert_eq!(
                fixed.and_then(Yaml::as_str),
                Some(ip),
                "{name}: advertise the container's fixed address"
            );
        }
        if let Some(listen) = env_str("GOSSAMER_METRICS_LISTEN") {
            assert_eq!(port_of(listen), METRICS_PORT);
        }
        for (key, port) in [
            ("GOSSAMER_ADMIN_LISTEN", ADMIN_PORT),
            ("GOSSAMER_PROXY_LISTEN", PROXY_PORT),
        ] {
            if let Some(listen) = env_str(key) {
                assert_eq!(port_of(listen), port, "{name}: {key}");
                let published = service.get("ports").map(seq).unwrap_or(&[]);
                let suffix = format!(":{port}");
                assert!(
                    published
                        .iter()
                        .filter_map(Yaml::as_str)
                        .any(|p| p.ends_with(&suffix)),
                    "{name}: {key} is not published"
                );
            }
        }
    }

    // Prometheus scrapes exactly the compose agents, on the metrics port.
    let prometheus = load_yaml("prometheus/prometheus.yml");
    let targets: BTreeSet<String> = seq(at(&prometheus, "scrape_configs"))
        .iter()
        .flat_map(|job| job.get("static_configs").map(seq).unwrap_or(&[]))
        .flat_map(|sc| sc.get("targets").map(seq).unwrap_or(&[]))
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let agents: BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("gossamer-"))
        .map(|n| format!("{n}:{METRICS_PORT}"))
        .collect();
    assert_eq!(
        targets, agents,
        "prometheus.yml static targets vs compose agents"
    );
    for job in seq(at(&prometheus, "scrape_configs")) {
        assert_eq!(
            job.get("metrics_path")
                .and_then(Yaml::as_str)
                .unwrap_or("/metrics"),
            "/metrics"
        );
    }

    // Grafana's provisioning points at the host of the prometheus service and
    // at the directory where compose mounts the dashboard.
    let datasources = load_yaml("grafana/provisioning/datasources/prometheus.yaml");
    let datasource = &seq(at(&datasources, "datasources"))[0];
    assert_eq!(str_at(datasource, "type"), "prometheus");
    let url = str_at(datasource, "url");
    assert!(
        names.iter().any(|n| url.contains(&format!("//{n}:"))),
        "datasource url {url} names no compose service"
    );
    let providers = load_yaml("grafana/provisioning/dashboards/gossamer.yaml");
    let provider = &seq(at(&providers, "providers"))[0];
    let dashboards_dir = str_at(provider, "options.path")
        .trim_end_matches('/')
        .to_owned();
    let grafana_volumes: Vec<&str> = seq(at(&compose, "services.grafana.volumes"))
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let mount = format!("./grafana/gossamer-dashboard.json:{dashboards_dir}/");
    assert!(
        grafana_volumes.iter().any(|v| v.starts_with(&mount)),
        "compose must mount the dashboard into {dashboards_dir}, got {grafana_volumes:?}"
    );
    assert!(
        grafana_volumes
            .iter()
            .any(|v| v.starts_with("./grafana/provisioning:/etc/grafana/provisioning")),
        "compose must mount the provisioning directory"
    );
}

// === tests: Dockerfile ===

#[test]
fn dockerfile_builds_the_locked_workspace_and_runs_unprivileged() {
    let dockerfile = read_deploy("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let text = instructions.join("\n");
    assert!(text.contains("FROM rust:1-bookworm AS build"));
    assert!(text.contains("cargo build --release --locked -p sidecar"));
    assert!(text.contains("FROM debian:bookworm-slim"));
    assert!(text.contains("ENTRYPOINT [\"gossamer\"]"));
    assert!(text.contains("CMD [\"agent\"]"));
    let expose = instructions
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let exposed: BTreeSet<&str> = expose.split_whitespace().collect();
    let wanted = [
        format!("{QUIC_PORT}/udp"),
        ADMIN_PORT.to_string(),
        PROXY_PORT.to_string(),
        METRICS_PORT.to_string(),
    ];
    for port in &wanted {
        assert!(
            exposed.contains(port.as_str()),
            "Dockerfile does not EXPOSE {port}"
        );
    }
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !matches!(user.split(':').next(), Some("0" | "root")),
        "the image must not run as root"
    );

    // --locked needs Cargo.lock in the build context (the repository root).
    assert!(
        repo_dir().join("Cargo.lock").is_file(),
        "Cargo.lock at the repository root"
    );
    let ignore = read_deploy("Dockerfile.dockerignore");
    for needed in [
        "Cargo.lock",
        "Cargo.toml",
        "sidecar",
        "mesh-proto",
        "client",
    ] {
        assert!(
            !ignore
                .lines()
                .map(str::trim)
                .any(|l| l == needed || l == format!("/{needed}")),
            "Dockerfile.dockerignore must not exclude {needed}"
        );
    }
}

// === tests: local-cluster.sh ===

#[test]
fn local_cluster_script_rejects_bad_node_counts() {
    let script = deploy_dir().join("local-cluster.sh");
    for args in [&[][..], &["0"], &["51"], &["three"], &["2", "3"]] {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .expect("run local-cluster.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "local-cluster.sh {args:?} should exit 2; stderr: {stderr}"
        );
        assert!(
            stderr.contains("usage: local-cluster.sh N"),
            "local-cluster.sh {args:?}: {stderr}"
        );
    }
}

#[test]
fn local_cluster_script_explains_a_missing_binary() {
    let out = Command::new("bash")
        .arg(deploy_dir().join("local-cluster.sh"))
        .arg("3")
        .env("GOSSAMER_BIN", "/nonexistent/gossamer")
        .output()
        .expect("run local-cluster.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p sidecar"),
        "{stderr}"
    );
}

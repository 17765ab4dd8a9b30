//! The replicated service catalog, end to end: definitions and instances
//! written through the admin API and the CLI on one agent are seen on the
//! others; blocking queries wake on changes; a crashed node's instances
//! vanish everywhere and come back with it; the data dir keeps what an agent
//! had; a late joiner converges through anti-entropy.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use client::select::Requirements;
use client::Client;
use common::{cluster, eventually, wait_alive, AgentProc, Spec};
use mesh_proto::api::{RegisterInstance, ServiceSummary, INDEX_HEADER};
use mesh_proto::catalog::{Definition, Instance};

const CONVERGE: Duration = Duration::from_secs(20);

// === helpers ===

/// Runs the `gossamer` CLI against `agent`: (success, stdout, stderr).
fn cli(agent: &AgentProc, args: &[&str]) -> (bool, String, String) {
    let output = common::gossamer()
        .arg("--agent")
        .arg(format!("http://{}", agent.listeners.admin))
        .args(args)
        .output()
        .expect("run the gossamer CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the CLI with `--json` and decodes its output, failing the test on error.
fn cli_json<T: serde::de::DeserializeOwned>(agent: &AgentProc, args: &[&str]) -> T {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = cli(agent, &all);
    assert!(ok, "gossamer {args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("gossamer {args:?} printed no JSON ({e}): {stdout}"))
}

fn definition(name: &str, version: &str) -> Definition {
    Definition {
        name: name.to_owned(),
        version: version.to_owned(),
        port: Some(8080),
        image: Some(format!("registry.example/{name}:{version}")),
        host_port: Some(18080),
        repository: Some(mesh_proto::catalog::Repository {
            url: format!("https://git.example/{name}.git"),
            container_file: Some("deploy/Containerfile".to_owned()),
        }),
        endpoints: BTreeMap::from([(
            "openapi".to_owned(),
            format!("http://{name}.localhost/openapi.json"),
        )]),
        client_sdks: BTreeMap::from([("rust".to_owned(), "https://crates.example/x".to_owned())]),
        requirements: mesh_proto::catalog::Requirements {
            soft_rtt_ms: Some(10),
            hard_rtt_ms: Some(30),
            cpu_millis: Some(250),
            memory_mb: Some(128),
        },
        protocol: mesh_proto::Protocol::Http2,
        content_hash: String::new(),
    }
}

fn registration(service: &str, port: u16) -> RegisterInstance {
    RegisterInstance {
        service: service.to_owned(),
        port: Some(port),
        address: None,
        id: None,
        deployment_id: Some("deploy-1".to_owned()),
        tags: vec!["test".to_owned()],
        health: None,
    }
}

/// Ids of every instance of `service` the agent lists (eligible or not), sorted.
async fn instance_ids(client: &Client, service: &str) -> Option<Vec<String>> {
    let view = client
        .instances(service, &Requirements::default())
        .await
        .ok()?;
    let mut ids: Vec<String> = view
        .eligible
        .iter()
        .chain(view.ineligible.iter())
        .map(|i| i.instance.id.clone())
        .collect();
    ids.sort();
    Some(ids)
}

/// Waits until every agent lists exactly `want` as the instances of `service`.
async fn wait_instances(agents: &[&AgentProc], service: &str, want: &[&str], timeout: Duration) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    for agent in agents {
        let client = agent.client();
        eventually(
            &format!(
                "{} to list {want:?} as instances of {service}",
                agent.node_id()
            ),
            timeout,
            || {
                let (client, want) = (client.clone(), want.clone());
                async move { (instance_ids(&client, service).await? == want).then_some(()) }
            },
        )
        .await;
    }
}

/// Waits until every agent holds a definition of `name` with this hash (None: no definition).
async fn wait_definition(agents: &[&AgentProc], name: &str, hash: Option<&str>) {
    for agent in agents {
        let client = agent.client();
        eventually(
            &format!("{} to hold definition {name} = {hash:?}", agent.node_id()),
            CONVERGE,
            || {
                let client = client.clone();
                async move {
                    let held = match client.definition(name).await {
                        Ok(d) => Some(d.content_hash),
                        Err(e) if e.is_not_found() => None,
                        Err(_) => return None,
                    };
                    (held.as_deref() == hash).then_some(())
                }
            },
        )
        .await;
    }
}

/// The services an agent lists, by name.
async fn summaries(client: &Client) -> BTreeMap<String, ServiceSummary> {
    client
        .services()
        .await
        .expect("list services")
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.to_string_lossy().into_owned()
}

// === tests ===

#[tokio::test]
async fn definitions_written_through_api_and_cli_spread_and_deletes_follow() {
    let a = AgentProc::start(Spec::new("def-a")).await;
    let b = AgentProc::start(Spec::new("def-b").join(&a)).await;
    wait_alive(&[&a, &b], &["def-a", "def-b"], CONVERGE).await;
    let (ca, cb) = (a.client(), b.client());

    // API: written on a, read back on a with its hash, then visible on b.
    let stored = ca
        .put_definition(&definition("billing", "1.0.0"))
        .await
        .expect("put billing");
    assert_eq!(stored.content_hash.len(), 32, "hash filled in: {stored:?}");
    let expected = Definition {
        content_hash: stored.content_hash.clone(),
        ..definition("billing", "1.0.0")
    };
    assert_eq!(stored, expected);
    assert_eq!(ca.definition("billing").await.expect("get on a"), expected);
    wait_definition(&[&b], "billing", Some(&stored.content_hash)).await;
    assert_eq!(cb.definition("billing").await.expect("get on b"), expected);
    let listed = summaries(&cb).await;
    assert_eq!(
        listed.get("billing").and_then(|s| s.definition.clone()),
        Some(expected.clone())
    );

    // Rewriting with other content changes the hash everywhere.
    let v2 = ca
        .put_definition(&definition("billing", "2.0.0"))
        .await
        .expect("put billing v2");
    assert_ne!(v2.content_hash, stored.content_hash);
    wait_definition(&[&a, &b], "billing", Some(&v2.content_hash)).await;

    // CLI: put FILE on b, list/get on a.
    let file = write_file(
        &b.data_dir,
        "ledger.json",
        &serde_json::to_string(&definition("ledger", "0.3.1")).expect("encode"),
    );
    let (ok, out, err) = cli(&b, &["services", "put", &file]);
    assert!(ok, "services put failed: {err}");
    assert!(out.contains("stored ledger"), "{out}");
    let ledger: Definition = cli_json(&b, &["services", "get", "ledger"]);
    assert_eq!(ledger.version, "0.3.1");
    wait_definition(&[&a], "ledger", Some(&ledger.content_hash)).await;
    let got: Definition = cli_json(&a, &["services", "get", "ledger"]);
    assert_eq!(got, ledger);
    // The seeds' fields crossed gossip and come back as written.
    assert_eq!(
        (got.image.as_deref(), got.port, got.host_port),
        (
            Some("registry.example/ledger:0.3.1"),
            Some(8080),
            Some(18080)
        )
    );
    let repository = got.repository.as_ref().expect("repository kept");
    assert_eq!(repository.url, "https://git.example/ledger.git");
    assert_eq!(
        repository.container_file.as_deref(),
        Some("deploy/Containerfile")
    );
    // For people: one field per line, every one of them shown.
    let (ok, shown, err) = cli(&a, &["services", "get", "ledger"]);
    assert!(ok, "{err}");
    for line in [
        "image                     registry.example/ledger:0.3.1",
        "port                      8080",
        "host_port                 18080",
        "repository.url            https://git.example/ledger.git",
        "repository.container_file deploy/Containerfile",
        "endpoint openapi          http://ledger.localhost/openapi.json",
        "client_sdk rust           https://crates.example/x",
        "hard_rtt_ms               30",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line:?} in:\n{shown}");
    }
    let listed: Vec<ServiceSummary> = cli_json(&a, &["services", "list"]);
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["billing", "ledger"]);
    let (ok, table, _) = cli(&a, &["services", "list"]);
    assert!(
        ok && table.contains("SERVICE") && table.contains("0.3.1"),
        "{table}"
    );

    // Deleted on b (API and CLI), gone on a.
    cb.delete_definition("billing")
        .await
        .expect("delete billing");
    let (ok, out, err) = cli(&b, &["services", "delete", "ledger"]);
    assert!(ok && out.contains("deleted ledger"), "{out} {err}");
    wait_definition(&[&a, &b], "billing", None).await;
    wait_definition(&[&a, &b], "ledger", None).await;
    assert!(summaries(&ca).await.is_empty());

    // Unknown names: 404 through the SDK, a failing exit through the CLI.
    let missing = ca.definition("billing").await.expect_err("deleted");
    assert!(missing.is_not_found(), "{missing}");
    let again = cb.delete_definition("billing").await.expect_err("gone");
    assert!(again.is_not_found(), "{again}");
    let (ok, _, err) = cli(&a, &["services", "get", "nope"]);
    assert!(!ok && err.contains("404") && err.contains("nope"), "{err}");
    let (ok, _, err) = cli(&a, &["services", "put", "/nonexistent/def.json"]);
    assert!(!ok && err.contains("cannot read"), "{err}");

    // The same name written on both agents at once ends identical on both.
    let (race_a, race_b) = (definition("race", "from-a"), definition("race", "from-b"));
    let (da, db) = tokio::join!(ca.put_definition(&race_a), cb.put_definition(&race_b));
    let (da, db) = (da.expect("put on a"), db.expect("put on b"));
    assert_ne!(da.content_hash, db.content_hash);
    let winner = eventually("both agents to agree on race", CONVERGE, || {
        let (ca, cb) = (ca.clone(), cb.clone());
        async move {
            let (x, y) = (
                ca.definition("race").await.ok()?,
                cb.definition("race").await.ok()?,
            );
            (x == y).then_some(x)
        }
    })
    .await;
    assert!(
        winner == da || winner == db,
        "the winner is one of the writes"
    );

    // A later write wins, whichever node makes it: first on the node whose
    // racing write lost (so neither "first write wins" nor "one node always
    // wins" passes), then back on the other one. Each is made after its
    // node has seen the current value, so it is later by the clock the
    // catalog orders writes with.
    let (loser, other) = if winner == da { (&cb, &ca) } else { (&ca, &cb) };
    let later = loser
        .put_definition(&definition("race", "later"))
        .await
        .expect("later put");
    wait_definition(&[&a, &b], "race", Some(&later.content_hash)).await;
    let latest = other
        .put_definition(&definition("race", "latest"))
        .await
        .expect("latest put");
    wait_definition(&[&a, &b], "race", Some(&latest.content_hash)).await;
    for client in [&ca, &cb] {
        assert_eq!(
            client.definition("race").await.expect("get race").version,
            "latest"
        );
    }
}

#[tokio::test]
async fn five_agents_all_see_a_write_made_on_any_one_and_its_delete() {
    let agents = cluster("five", 5).await;
    let refs: Vec<&AgentProc> = agents.iter().collect();
    wait_alive(
        &refs,
        &["five-1", "five-2", "five-3", "five-4", "five-5"],
        CONVERGE,
    )
    .await;

    let started = Instant::now();
    let stored = agents[0]
        .client()
        .put_definition(&definition("search", "1.0.0"))
        .await
        .expect("put on five-1");
    let instance = agents[2]
        .client()
        .register(&registration("search", 18500))
        .await
        .expect("register on five-3");
    wait_definition(&refs, "search", Some(&stored.content_hash)).await;
    wait_instances(&refs, "search", &[&instance.id], CONVERGE).await;
    eprintln!(
        "a definition and an instance reached all 5 agents after {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    agents[4]
        .client()
        .delete_definition("search")
        .await
        .expect("delete on five-5");
    agents[2]
        .client()
        .deregister(&instance.id)
        .await
        .expect("deregister on five-3");
    wait_definition(&refs, "search", None).await;
    wait_instances(&refs, "search", &[], CONVERGE).await;
    eprintln!(
        "the deletes reached all 5 agents after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn instances_registered_through_cli_and_api_and_flags_spread_and_leave() {
    let a = AgentProc::start(Spec::new("inst-a")).await;
    let b = AgentProc::start(Spec::new("inst-b").join(&a)).await;
    let mut c = AgentProc::start(
        Spec::new("inst-c")
            .join(&a)
            .arg("--service")
            .arg("flagged=18081"),
    )
    .await;
    wait_alive(&[&a, &b, &c], &["inst-a", "inst-b", "inst-c"], CONVERGE).await;
    let (ca, cb) = (a.client(), b.client());

    // `--service` registered at start, seen by the others.
    wait_instances(
        &[&a, &b, &c],
        "flagged",
        &["flagged-inst-c-18081"],
        CONVERGE,
    )
    .await;

    // CLI register on a, listed by `gossamer instances` on b.
    let registered: Instance = cli_json(&a, &["register", "orders", "--port", "18090"]);
    assert_eq!(registered.node.as_str(), "inst-a");
    assert_eq!(registered.address.to_string(), "127.0.0.1:18090");
    let (ok, out, err) = cli(
        &a,
        &[
            "register",
            "orders",
            "--port",
            "18091",
            "--id",
            "orders-x",
            "--deployment",
            "deploy-9",
        ],
    );
    assert!(ok && out.contains("registered orders-x"), "{out} {err}");
    wait_instances(&[&b, &c], "orders", &[&registered.id, "orders-x"], CONVERGE).await;
    // The deployment id crossed gossip with the instance.
    let seen_on_c = c
        .client()
        .instances("orders", &Default::default())
        .await
        .expect("instances on c");
    let x = seen_on_c
        .eligible
        .iter()
        .chain(&seen_on_c.ineligible)
        .find(|i| i.instance.id == "orders-x")
        .expect("orders-x listed on c");
    assert_eq!(x.instance.deployment_id.as_deref(), Some("deploy-9"));
    let (ok, table, err) = cli(&b, &["instances", "orders"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("orders-x") && table.contains("inst-a") && table.contains("127.0.0.1:18091"),
        "{table}"
    );

    // API register on b, with the fields kept as given.
    let mut request = registration("orders", 18092);
    request.id = Some("orders-b".to_owned());
    let on_b = cb.register(&request).await.expect("register on b");
    assert_eq!(on_b.deployment_id.as_deref(), Some("deploy-1"));
    assert_eq!(on_b.tags, ["test"]);
    wait_instances(
        &[&a, &c],
        "orders",
        &[&registered.id, "orders-x", "orders-b"],
        CONVERGE,
    )
    .await;
    let counted = summaries(&ca).await;
    assert_eq!(
        counted.get("orders").map(|s| (s.instances, s.passing)),
        Some((3, 3))
    );

    // Only the owning node deregisters its instances.
    let foreign = ca.deregister("orders-b").await.expect_err("not a's");
    assert!(foreign.is_not_found(), "{foreign}");
    let (ok, _, err) = cli(&b, &["deregister", "orders-x"]);
    assert!(!ok && err.contains("404"), "{err}");

    // CLI deregister on a, API deregister on b: gone everywhere.
    let (ok, out, err) = cli(&a, &["deregister", "orders-x"]);
    assert!(ok && out.contains("deregistered orders-x"), "{out} {err}");
    let raw = common::http_request(
        b.listeners.admin,
        "DELETE",
        "/v1/instances/orders-b",
        &[],
        vec![],
    )
    .await
    .expect("DELETE on b");
    assert_eq!(raw.0, 200, "{}", raw.2);
    assert!(raw.1.contains_key(INDEX_HEADER));
    wait_instances(&[&a, &b, &c], "orders", &[&registered.id], CONVERGE).await;
    let missing = cb.deregister("orders-b").await.expect_err("already gone");
    assert!(missing.is_not_found(), "{missing}");

    // A clean stop deregisters the `--service` instance: the others drop the
    // record itself (a tombstone), not only hide it behind a down node.
    let status = c.terminate().expect("exit status");
    assert!(status.success(), "inst-c exited with {status}");
    for agent in [&a, &b] {
        let client = agent.client();
        eventually(
            &format!("{} to forget the flagged service", agent.node_id()),
            CONVERGE,
            || {
                let client = client.clone();
                async move { (!summaries(&client).await.contains_key("flagged")).then_some(()) }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change_or_for_the_wait_time() {
    let a = AgentProc::start(Spec::new("block-a")).await;
    let b = AgentProc::start(Spec::new("block-b").join(&a)).await;
    wait_alive(&[&a, &b], &["block-a", "block-b"], CONVERGE).await;
    let (ca, cb) = (a.client(), b.client());

    // A watcher on b blocks on the instances of `watched` until a registers one.
    let before = cb
        .instances_after("watched", &Requirements::default(), None)
        .await
        .expect("first read");
    assert!(before.index > 0, "every answer carries {INDEX_HEADER}");
    assert!(before.value.eligible.is_empty());
    let watcher = {
        let cb = cb.clone();
        let index = before.index;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = cb
                .instances_after(
                    "watched",
                    &Requirements::default(),
                    Some((index, Duration::from_secs(5))),
                )
                .await;
            (answer, started.elapsed())
        })
    };
    ca.register(&registration("watched", 18100))
        .await
        .expect("register");
    let (answer, took) = watcher.await.expect("watcher task");
    let answer = answer.expect("blocking read");
    assert!(
        answer.index > before.index,
        "{} > {}",
        answer.index,
        before.index
    );
    eprintln!("blocking query answered {took:?} after it was sent");
    // It may wake on an unrelated change first (a watcher then asks again
    // with the new index), but it never answers before some change.
    let deadline = Instant::now() + CONVERGE;
    let mut latest = answer;
    while latest.value.eligible.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the watcher never saw the instance"
        );
        let since = latest.index;
        latest = cb
            .instances_after(
                "watched",
                &Requirements::default(),
                Some((since, Duration::from_secs(5))),
            )
            .await
            .expect("blocking read");
        assert!(latest.index >= since);
    }
    assert_eq!(latest.value.eligible[0].instance.node.as_str(), "block-a");

    // Errors carry the index too, so a watcher can wait for a name to appear.
    let (status, headers, body) =
        common::http_get(b.listeners.admin, "/v1/services/nothing-here", &[])
            .await
            .expect("GET");
    assert_eq!(status, 404, "{body}");
    assert!(
        headers.contains_key(INDEX_HEADER),
        "404 without {INDEX_HEADER}"
    );

    // Nothing changes on a lone agent: the query returns when the wait ends, same index.
    let lone = AgentProc::start(Spec::new("block-lone")).await;
    let index: u64 = {
        let (_, headers, _) = common::http_get(lone.listeners.admin, "/v1/services", &[])
            .await
            .expect("GET");
        header_index(&headers)
    };
    let path = format!("/v1/services?index={index}&wait=1s");
    let (status, headers, body) = tokio::time::timeout(
        Duration::from_secs(15),
        common::http_get(lone.listeners.admin, &path, &[]),
    )
    .await
    .expect("the blocking query returns after its wait")
    .expect("GET");
    assert_eq!(status, 200, "{body}");
    assert_eq!(header_index(&headers), index);

    // An index from before a restart (ahead of the agent's own) answers at once.
    let ahead = format!("/v1/services?index={}&wait=10m", index + 1_000_000);
    let answered = tokio::time::timeout(
        Duration::from_secs(15),
        common::http_get(lone.listeners.admin, &ahead, &[]),
    )
    .await
    .expect("an index ahead of the agent's is answered without waiting 10 minutes")
    .expect("GET");
    assert_eq!(answered.0, 200, "{}", answered.2);
}

fn header_index(headers: &http::HeaderMap) -> u64 {
    headers
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {INDEX_HEADER} in {headers:?}"))
}

#[tokio::test]
async fn a_crashed_node_loses_its_instances_everywhere_and_gets_them_back_on_restart() {
    let a = AgentProc::start(Spec::new("crash-a")).await;
    let b = AgentProc::start(Spec::new("crash-b").join(&a)).await;
    let mut c = AgentProc::start(
        Spec::new("crash-c")
            .join(&a)
            .arg("--service")
            .arg("pay=18200"),
    )
    .await;
    wait_alive(&[&a, &b, &c], &["crash-a", "crash-b", "crash-c"], CONVERGE).await;
    let mut request = registration("pay", 18201);
    request.id = Some("pay-api".to_owned());
    c.client().register(&request).await.expect("register on c");
    b.client()
        .register(&registration("pay", 18202))
        .await
        .expect("register on b");
    let all = ["pay-api", "pay-crash-b-18202", "pay-crash-c-18200"];
    wait_instances(&[&a, &b], "pay", &all, CONVERGE).await;

    // SIGKILL: no leave, no deregistration; failure detection takes them out.
    c.kill();
    let started = Instant::now();
    wait_instances(&[&a, &b], "pay", &["pay-crash-b-18202"], CONVERGE).await;
    eprintln!(
        "crashed node's instances gone everywhere after {:?}",
        started.elapsed()
    );
    // Hidden, not deleted: the service stays listed with only b's instance.
    let listed = summaries(&a.client()).await;
    assert_eq!(listed.get("pay").map(|s| s.instances), Some(1));

    // Restarted on its data dir: both its flag and its API registration come back.
    c.restart().await;
    let started = Instant::now();
    wait_instances(&[&a, &b, &c], "pay", &all, CONVERGE).await;
    eprintln!(
        "restarted node's instances back everywhere after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn corrupt_persistence_files_are_named_at_start_or_ignored_when_peers_can_refill_them() {
    let mut solo = AgentProc::start(Spec::new("corrupt-solo")).await;
    let client = solo.client();
    let mut request = registration("ledger", 18400);
    request.id = Some("ledger-1".to_owned());
    client.register(&request).await.expect("register");
    let status = solo.terminate().expect("exit status");
    assert!(status.success(), "exited with {status}");
    let dir = solo.data_dir.clone();

    // The node's own registrations exist nowhere else: a garbled file stops
    // the start with a message that names it and says what to do, rather
    // than starting without them.
    let registrations = dir.join("registrations.json");
    let saved = std::fs::read(&registrations).expect("registrations saved at stop");
    std::fs::write(&registrations, &saved[..saved.len() / 2]).expect("garble");
    let output = common::run_bounded(
        common::gossamer()
            .args(["agent", "--node-id", "corrupt-solo", "--profile", "local"])
            .args(["--psk", common::PSK])
            .args(["--bind", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args([
                "--proxy-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(&dir),
        Duration::from_secs(60),
        "an agent on a corrupt registrations file",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("registrations.json") && stderr.contains("corrupt"),
        "the error does not name the file: {stderr}"
    );
    assert!(stderr.contains("remove it"), "no way out given: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The catalog snapshot is a cache of what peers hold: a garbled one is
    // ignored with a warning, and the node's own registrations still load.
    std::fs::write(&registrations, &saved).expect("restore");
    std::fs::write(dir.join("catalog.snapshot"), b"\xff\xff\xff\xff garbage").expect("garble");
    solo.restart().await;
    assert!(
        solo.log().contains("unreadable catalog snapshot"),
        "no warning about the snapshot:\n{}",
        solo.log()
    );
    let kept_aside = std::fs::read_dir(&dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("catalog.snapshot.corrupt-")
        });
    assert!(
        kept_aside,
        "the garbled snapshot is kept aside for inspection"
    );
    let client = solo.client();
    assert_eq!(
        instance_ids(&client, "ledger").await.expect("instances"),
        ["ledger-1"]
    );
}

#[tokio::test]
async fn registrations_and_definitions_survive_a_restart() {
    let mut solo = AgentProc::start(Spec::new("persist-solo")).await;
    let client = solo.client();
    let stored = client
        .put_definition(&definition("kept", "1.2.3"))
        .await
        .expect("put");
    let mut request = registration("kept", 18300);
    request.id = Some("kept-1".to_owned());
    client.register(&request).await.expect("register");
    client
        .register(&registration("kept", 18301))
        .await
        .expect("register");
    client
        .deregister("kept-persist-solo-18301")
        .await
        .expect("deregister");

    // A clean stop saves everything.
    let status = solo.terminate().expect("exit status");
    assert!(status.success(), "exited with {status}");
    solo.restart().await;
    let client = solo.client();
    assert_eq!(
        client.definition("kept").await.expect("definition kept"),
        stored
    );
    assert_eq!(
        instance_ids(&client, "kept").await.expect("instances"),
        ["kept-1"]
    );

    // A crash: registrations are on disk at once, the snapshot within seconds.
    client
        .put_definition(&definition("after", "9.9.9"))
        .await
        .expect("put");
    let mut request = registration("after", 18302);
    request.id = Some("after-1".to_owned());
    client.register(&request).await.expect("register");
    let snapshot = solo.data_dir.join("catalog.snapshot");
    let saved_before = std::fs::metadata(&snapshot).and_then(|m| m.modified()).ok();
    eventually("the catalog snapshot to be saved", CONVERGE, || {
        let snapshot = snapshot.clone();
        async move {
            let now = std::fs::metadata(&snapshot).and_then(|m| m.modified()).ok();
            (now.is_some() && now != saved_before).then_some(())
        }
    })
    .await;
    solo.kill();
    solo.restart().await;
    let client = solo.client();
    assert_eq!(
        client.definition("after").await.expect("kept").version,
        "9.9.9"
    );
    assert_eq!(client.definition("kept").await.expect("kept"), stored);
    assert_eq!(
        instance_ids(&client, "after").await.expect("instances"),
        ["after-1"]
    );
    assert_eq!(
        instance_ids(&client, "kept").await.expect("instances"),
        ["kept-1"]
    );
}

#[tokio::test]
async fn a_late_joiner_gets_the_whole_catalog_through_anti_entropy() {
    let a = AgentProc::start(Spec::new("late-a")).await;
    let b = AgentProc::start(Spec::new("late-b").join(&a)).await;
    wait_alive(&[&a, &b], &["late-a", "late-b"], CONVERGE).await;
    let (ca, cb) = (a.client(), b.client());
    let mut hashes = Vec::new();
    for i in 0..5 {
        let writer = if i % 2 == 0 { &ca } else { &cb };
        let stored = writer
            .put_definition(&definition(&format!("svc-{i}"), "1.0.0"))
            .await
            .expect("put");
        hashes.push(stored.content_hash);
    }
    ca.register(&registration("svc-0", 18400))
        .await
        .expect("register");
    cb.register(&registration("svc-1", 18401))
        .await
        .expect("register");
    let gone = ca
        .put_definition(&definition("gone", "1"))
        .await
        .expect("put");
    // b deletes what it has seen: a delete is checked against the local catalog.
    wait_definition(&[&b], "gone", Some(&gone.content_hash)).await;
    cb.delete_definition("gone").await.expect("delete on b");
    wait_definition(&[&a, &b], "gone", None).await;
    wait_instances(&[&b], "svc-0", &["svc-0-late-a-18400"], CONVERGE).await;

    // Long after those broadcasts stopped, a new agent joins.
    let started = Instant::now();
    let c = AgentProc::start(Spec::new("late-c").join(&a)).await;
    for (i, hash) in hashes.iter().enumerate() {
        wait_definition(&[&c], &format!("svc-{i}"), Some(hash)).await;
    }
    wait_instances(&[&c], "svc-0", &["svc-0-late-a-18400"], CONVERGE).await;
    wait_instances(&[&c], "svc-1", &["svc-1-late-b-18401"], CONVERGE).await;
    eprintln!(
        "late joiner started and converged in {:?}",
        started.elapsed()
    );
    let names: Vec<String> = summaries(&c.client()).await.into_keys().collect();
    assert_eq!(names, ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]);
}

#[tokio::test]
async fn a_record_too_big_for_a_gossip_packet_still_reaches_every_agent() {
    let agents = cluster("big", 3).await;
    let refs: Vec<&AgentProc> = agents.iter().collect();
    wait_alive(&refs, &["big-1", "big-2", "big-3"], CONVERGE).await;
    // About 5 KB of endpoints (61, under the limit of 64): far over a SWIM
    // packet (about 1.2 KB), so no broadcast can carry it; anti-entropy must.
    let mut big = definition("sprawling", "1.0.0");
    for i in 0..60 {
        big.endpoints.insert(
            format!("endpoint-{i:03}"),
            format!("http://sprawling.localhost/api/v1/resources/{i:03}/documents/openapi.json"),
        );
    }
    let stored = agents[0]
        .client()
        .put_definition(&big)
        .await
        .expect("put a big definition");
    wait_definition(&refs, "sprawling", Some(&stored.content_hash)).await;
    let got = agents[2]
        .client()
        .definition("sprawling")
        .await
        .expect("get on the third agent");
    assert_eq!(got.endpoints.len(), big.endpoints.len());
    assert_eq!(got, stored);
}

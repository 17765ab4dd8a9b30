//! `gossamer up` end to end: a temp folder of three services (`db`, `api`
//! depending on db, `web` depending on api and calling it by name through
//! the proxy when it starts), run by a real `gossamer up` process; run-time
//! `scale`, `stop` and `start` under a GET loop; a file change rebuilds and
//! rolls api with no failed call; a broken build keeps the old copies
//! serving; `gossamer down` from another process stops everything; and a
//! bad `service.toml` is refused with its file and key named.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, http_get, http_request, run_bounded};
use sidecar::supervise::control::ScaleView;
use sidecar::supervise::PsView;

const GOSSAMER: &str = env!("CARGO_BIN_EXE_gossamer");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-up-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The three services. api's copies answer with the version its build
/// copied into `built.txt`; a `version.txt` holding "fail" fails the build.
fn three_services(dir: &Path) {
    write(
        &dir.join("db/service.toml"),
        &format!("command = [\"{GOSSAMER}\", \"echo\", \"--name\", \"db\"]\n"),
    );
    write(&dir.join("api/version.txt"), "v1");
    write(
        &dir.join("api/service.toml"),
        &format!(
            "command = \"exec {GOSSAMER} echo --name api-$(cat built.txt)\"\n\
             build = \"! grep -q fail version.txt && cp version.txt built.txt\"\n\
             watch = [\"version.txt\"]\n\
             scale = 2\n\
             depends_on = [\"db\"]\n\
             drain_ms = 600\n\
             grace_ms = 3000\n"
        ),
    );
    write(
        &dir.join("web/service.toml"),
        &format!(
            "# web calls api by name through the agent's proxy as it starts\n\
             command = \"{GOSSAMER} call api /from-web --proxy $PROXY_ADDR > called.txt && exec {GOSSAMER} echo --name web\"\n\
             depends_on = [\"api\"]\n"
        ),
    );
}

/// A running `gossamer up`, its stdout collected; killed (with what it
/// started) if the test ends early.
struct Up {
    child: Child,
    dir: PathBuf,
    output: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Up {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let mut command = common::gossamer();
        command
            .arg("up")
            .arg(dir)
            .args(extra)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--proxy-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--bind", "127.0.0.1:0"])
            .args(["--dns-listen", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start gossamer up");
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
        Self {
            child,
            dir: dir.to_owned(),
            output,
        }
    }

    fn printed(&self) -> String {
        self.output.lock().expect("lines").join("\n")
    }

    async fn listeners(&self) -> sidecar::agent::Listeners {
        let path = self.dir.join(".gossamer/data/listeners.json");
        eventually(
            "gossamer up to write listeners.json",
            Duration::from_secs(60),
            || {
                let path = path.clone();
                async move {
                    let bytes = std::fs::read(&path).ok()?;
                    serde_json::from_slice(&bytes).ok()
                }
            },
        )
        .await
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failed test leaves no process behind; a passing one stopped
        // them itself (and keeps a stray alive on purpose meanwhile).
        if std::thread::panicking() {
            for pid in common::recorded_pids(&self.dir.join(".gossamer/data/supervise")) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

async fn ps(admin: SocketAddr) -> Option<PsView> {
    let (status, _, body) = http_get(admin, "/v1/supervise", &[]).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Waits until `service` runs exactly `n` copies, all passing.
async fn wait_copies(admin: SocketAddr, service: &str, n: usize) {
    eventually(
        &format!("{service} to run {n} passing copies"),
        Duration::from_secs(60),
        || async move {
            let view = ps(admin).await?;
            let copies: Vec<_> = view
                .processes
                .iter()
                .filter(|p| p.service == service)
                .collect();
            (copies.len() == n
                && copies
                    .iter()
                    .all(|p| p.health == Some(mesh_proto::catalog::Health::Passing)))
            .then_some(())
        },
    )
    .await;
}

async fn control(admin: SocketAddr, path: &str) -> ScaleView {
    let (status, _, body) = http_request(admin, "POST", path, &[], Vec::new())
        .await
        .expect("answer");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("scale view")
}

/// What one load worker saw: calls, failures, the copies' names.
type Tally = (usize, Vec<String>, Vec<String>);
type Workers = Vec<tokio::task::JoinHandle<Tally>>;

/// GETs api through the proxy from 4 workers until `done` (bounded in
/// count and time): (calls, failures, answers by name).
fn load(proxy: SocketAddr, done: Arc<AtomicBool>) -> Workers {
    let deadline = Instant::now() + Duration::from_secs(90);
    (0..4)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let (mut calls, mut failures, mut names) = (0, Vec::new(), Vec::new());
                while !done.load(Ordering::Relaxed) && calls < 20_000 && Instant::now() < deadline {
                    calls += 1;
                    match http_get(proxy, "/?delay_ms=20", &[("host", "api.localhost")]).await {
                        Some((200, _, body)) => {
                            let name = serde_json::from_str::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v.get("instance")?.as_str().map(str::to_owned))
                                .unwrap_or_default();
                            if !names.contains(&name) {
                                names.push(name);
                            }
                        }
                        Some((status, _, body)) => failures.push(format!("{status}: {body}")),
                        None => failures.push("no answer".to_owned()),
                    }
                }
                (calls, failures, names)
            })
        })
        .collect()
}

async fn finish(done: &AtomicBool, workers: Workers) -> Tally {
    done.store(true, Ordering::Relaxed);
    let (mut calls, mut failures, mut names) = (0, Vec::new(), Vec::new());
    for worker in workers {
        let (c, f, n) = worker.await.expect("worker");
        calls += c;
        failures.extend(f);
        for name in n {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    (calls, failures, names)
}

#[tokio::test]
async fn up_runs_a_folder_in_order_scales_rebuilds_and_goes_down() {
    let dir = scratch("three");
    three_services(&dir);
    let up = Up::start(&dir);
    let listeners = up.listeners().await;
    let (admin, proxy) = (listeners.admin, listeners.proxy);
    wait_copies(admin, "db", 1).await;
    wait_copies(admin, "api", 2).await;
    wait_copies(admin, "web", 1).await;

    // Dependency order: api started after db served, web after api did;
    // web reached api by name through the proxy as it started.
    let called = std::fs::read_to_string(dir.join("web/called.txt")).expect("called.txt");
    assert!(called.contains("api-v1"), "web's call of api: {called}");
    let first = |service: &'static str, needle: &'static str| async move {
        let (_, _, body) = http_get(admin, &format!("/v1/supervise/{service}/logs"), &[])
            .await
            .expect("logs");
        let view: sidecar::supervise::logs::LogsView =
            serde_json::from_str(&body).expect("logs view");
        view.lines
            .iter()
            .find(|l| l.text.contains(needle))
            .map(|l| l.ts_us)
            .unwrap_or_else(|| panic!("no {needle:?} in {service}'s logs: {body}"))
    };
    assert!(first("db", "registered").await < first("api", "started pid").await);
    assert!(first("api", "registered").await < first("web", "started pid").await);
    let printed = up.printed();
    assert!(
        printed.contains("SERVICE") && printed.contains("api"),
        "{printed}"
    );

    // Scale up then down under load: no call lost.
    let done = Arc::new(AtomicBool::new(false));
    let workers = load(proxy, done.clone());
    let up3 = control(admin, "/v1/supervise/api/scale?n=3").await;
    assert_eq!((up3.from, up3.to, up3.started.len()), (2, 3, 1), "{up3:?}");
    wait_copies(admin, "api", 3).await;
    let down1 = control(admin, "/v1/supervise/api/scale?n=1").await;
    let (calls, failures, _) = finish(&done, workers).await;
    eprintln!(
        "scale api 3 then 1: {calls} GETs, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {failures:?}",
        failures.len()
    );
    assert!(calls >= 20, "too few calls: {calls}");
    assert_eq!(down1.stopped.len(), 2, "{down1:?}");
    assert!(down1.stopped[0].ends_with("-3"), "newest first: {down1:?}");
    let view = ps(admin).await.expect("ps");
    let api: Vec<_> = view
        .processes
        .iter()
        .filter(|p| p.service == "api")
        .collect();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].copy, 1, "the oldest copy stays");
    let metrics = listeners.metrics.expect("metrics listener");
    let (_, _, text) = http_get(metrics, "/metrics", &[]).await.expect("metrics");
    assert_eq!(
        common::metric_value(&text, "gossamer_supervised_copies", &[("service", "api")]),
        1.0,
        "{text}"
    );

    // stop and start, with the CLI.
    let cli = |args: &[&str]| {
        let out = run_bounded(
            common::gossamer()
                .arg("--agent")
                .arg(format!("http://{admin}"))
                .args(args),
            Duration::from_secs(60),
            "gossamer stop/start",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stopped = cli(&["stop", "web"]);
    assert!(
        stopped.contains("1 -> 0") && stopped.contains("drained and stopped"),
        "{stopped}"
    );
    let view = ps(admin).await.expect("ps");
    assert!(view.processes.iter().all(|p| p.service != "web"));
    assert!(view
        .services
        .iter()
        .any(|s| s.service == "web" && s.state == "stopped"));
    let (status, _, _) = http_get(proxy, "/", &[("host", "web.localhost")])
        .await
        .expect("answer");
    assert_ne!(status, 200, "a stopped service is not served");
    let started = cli(&["start", "web"]);
    assert!(started.contains("0 -> 1"), "{started}");
    wait_copies(admin, "web", 1).await;
    let ps_text = cli(&["ps"]);
    assert!(
        ps_text.contains("web") && ps_text.contains("running"),
        "{ps_text}"
    );

    // A change rebuilds and rolls api, one copy at a time: no call lost.
    control(admin, "/v1/supervise/api/scale?n=2").await;
    wait_copies(admin, "api", 2).await;
    let done = Arc::new(AtomicBool::new(false));
    let workers = load(proxy, done.clone());
    write(&dir.join("api/version.txt"), "v2");
    eventually(
        "api's copies to serve v2",
        Duration::from_secs(90),
        || async move {
            let view = ps(admin).await?;
            let all_new = view
                .processes
                .iter()
                .filter(|p| p.service == "api")
                .all(|p| p.restarts >= 1 && p.health == Some(mesh_proto::catalog::Health::Passing));
            all_new.then_some(())
        },
    )
    .await;
    let (calls, failures, names) = finish(&done, workers).await;
    eprintln!(
        "rebuild and roll of api: {calls} GETs, {} failed, served by {names:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {failures:?}",
        failures.len()
    );
    assert!(names.contains(&"api-v2".to_owned()), "{names:?}");
    for _ in 0..10 {
        let (_, _, body) = http_get(proxy, "/", &[("host", "api.localhost")])
            .await
            .expect("answer");
        assert!(
            body.contains("api-v2"),
            "every copy rolled to the new build: {body}"
        );
    }

    // A broken build: old copies keep serving, ps and logs say so.
    write(&dir.join("api/version.txt"), "fail");
    let message = eventually(
        "ps to report the failed build",
        Duration::from_secs(60),
        || async move {
            let view = ps(admin).await?;
            let build = view
                .services
                .iter()
                .find(|s| s.service == "api")?
                .build
                .clone()?;
            (!build.ok).then_some(build.message)
        },
    )
    .await;
    assert!(message.contains("keep serving"), "{message}");
    let (_, _, logs) = http_get(admin, "/v1/supervise/api/logs", &[])
        .await
        .expect("logs");
    assert!(
        logs.contains("api-build") && logs.contains("the build failed"),
        "the build's failure is in api's logs: {logs}"
    );
    for _ in 0..20 {
        let (status, _, body) = http_get(proxy, "/", &[("host", "api.localhost")])
            .await
            .expect("answer");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("api-v2"), "{body}");
    }

    // A second `up` of the same folder is refused while this one runs.
    let second = run_bounded(
        common::gossamer().arg("up").arg(&dir),
        Duration::from_secs(30),
        "a second gossamer up",
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains("still runs"),
        "{err}"
    );

    // `gossamer down` from another process stops everything.
    let pids = common::recorded_pids(&dir.join(".gossamer/data/supervise"));
    assert_eq!(pids.len(), 4, "db, api x2, web: {pids:?}");
    let down = run_bounded(
        common::gossamer().arg("down").arg(&dir),
        Duration::from_secs(120),
        "gossamer down",
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let mut up = up;
    let status = up.child.wait().expect("up exits");
    assert!(status.success(), "gossamer up exited with {status}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "pid {pid} still runs after down"
        );
    }
    assert!(!dir.join(".gossamer/up.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn down(dir: &Path) {
    let out = run_bounded(
        common::gossamer().arg("down").arg(dir),
        Duration::from_secs(120),
        "gossamer down",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn processes_a_crashed_up_left_are_reported_and_kill_strays_stops_them() {
    let dir = scratch("strays");
    write(
        &dir.join("db/service.toml"),
        &format!("command = [\"{GOSSAMER}\", \"echo\", \"--name\", \"db\"]\n"),
    );
    let listeners_json = dir.join(".gossamer/data/listeners.json");
    let mut first = Up::start(&dir);
    wait_copies(first.listeners().await.admin, "db", 1).await;
    let pids = common::recorded_pids(&dir.join(".gossamer/data/supervise"));
    assert_eq!(pids.len(), 1, "{pids:?}");
    let stray = pids[0];
    // A crash: `up` is killed, its copy (its own process group) runs on.
    let _ = first.child.kill();
    let _ = first.child.wait();
    assert!(common::alive(stray));
    let _ = std::fs::remove_file(&listeners_json);

    // Reported, not stopped.
    let second = Up::start(&dir);
    wait_copies(second.listeners().await.admin, "db", 1).await;
    let printed = eventually("the stray to be reported", Duration::from_secs(30), || {
        let printed = second.printed();
        async move {
            printed
                .contains("still runs from an earlier run")
                .then_some(printed)
        }
    })
    .await;
    assert!(
        printed.contains(&stray.to_string()) && printed.contains("--kill-strays"),
        "{printed}"
    );
    assert!(
        common::alive(stray),
        "a stray is never stopped without --kill-strays"
    );
    down(&dir);
    drop(second);
    let _ = std::fs::remove_file(&listeners_json);

    // --kill-strays stops it, and says so.
    let third = Up::start_with(&dir, &["--kill-strays"]);
    wait_copies(third.listeners().await.admin, "db", 1).await;
    let printed = third.printed();
    assert!(
        printed.contains(&format!("stopping pid {stray}")),
        "{printed}"
    );
    eventually(
        "the stray to be gone",
        Duration::from_secs(10),
        || async move { (!common::alive(stray)).then_some(()) },
    )
    .await;
    down(&dir);
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_service_waits_for_its_dependency_and_up_says_so() {
    let dir = scratch("waits");
    // db never serves (it does not listen), so api can only wait.
    write(
        &dir.join("db/service.toml"),
        "command = \"exec sleep 600\"\n",
    );
    write(
        &dir.join("api/service.toml"),
        &format!("command = [\"{GOSSAMER}\", \"echo\"]\ndepends_on = [\"db\"]\n"),
    );
    let up = Up::start(&dir);
    let admin = up.listeners().await.admin;
    eventually(
        "up to print that api waits for db",
        Duration::from_secs(30),
        || {
            let printed = up.printed();
            async move { printed.contains("waiting for db").then_some(()) }
        },
    )
    .await;
    let view = ps(admin).await.expect("ps");
    let api = view
        .services
        .iter()
        .find(|s| s.service == "api")
        .expect("api listed");
    assert_eq!(api.state, "waiting");
    assert_eq!(api.waiting_for, ["db"]);
    assert!(
        view.processes.iter().all(|p| p.service != "api"),
        "api not started"
    );
    let scaled = control(admin, "/v1/supervise/api/scale?n=2").await;
    let note = scaled.note.unwrap_or_default();
    assert!(
        note.contains("db") && note.contains("will start 2"),
        "{note}"
    );
    down(&dir);
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_service_toml_is_refused_naming_the_file_and_the_key() {
    type Files<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Files, &[&str]); 3] = [
        (
            &[("api", "command = \"true\"\nreplicas = 2\n")],
            &["api/service.toml", "replicas"],
        ),
        (
            &[("api", "scale = 2\n")],
            &["api/service.toml", "`command`"],
        ),
        (
            &[
                ("a", "command = \"true\"\ndepends_on = [\"b\"]\n"),
                ("b", "command = \"true\"\ndepends_on = [\"a\"]\n"),
            ],
            &["depends_on", "cycle", "a -> b -> a"],
        ),
    ];
    for (files, needles) in cases {
        let dir = scratch("bad");
        for (service, text) in files {
            write(&dir.join(service).join("service.toml"), text);
        }
        let out = run_bounded(
            Command::new(GOSSAMER).arg("up").arg(&dir),
            Duration::from_secs(30),
            "gossamer up on a bad folder",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
        assert!(!dir.join(".gossamer").exists(), "nothing started: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

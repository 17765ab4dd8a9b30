//! TCP services through the mesh with a real database: Debian's
//! `redis-server` behind nodes B and C, reached from node A's
//! `--tcp redis=…` listener with `redis-cli` and a small RESP client;
//! killing the node of an open connection's instance fails that connection
//! and sends new ones to the survivor.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, metric_value, wait_instances_measured, AgentProc, Spec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A redis-server of this test on a free loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: the TCP tests run a real redis through the mesh; \
         install Debian's redis-server (apt-get install -y redis-server, as .ci/run does)"
    );
}

async fn redis_server() -> Redis {
    require("redis-server");
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let redis = Redis { port, child };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(
        "redis-server to answer PING",
        Duration::from_secs(10),
        || async move {
            let mut conn = Resp::connect(addr).await.ok()?;
            (conn.command(&["PING"]).await.ok()? == "PONG").then_some(())
        },
    )
    .await;
    redis
}

/// A minimal RESP client: commands out, simple/bulk/integer/error replies in.
struct Resp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

impl Resp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
        })
    }

    async fn reply(&mut self) -> std::io::Result<String> {
        read_reply(&mut self.reader).await
    }

    async fn command(&mut self, args: &[&str]) -> std::io::Result<String> {
        let run = async {
            self.writer.write_all(&encode(args)).await?;
            self.reply().await
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| std::io::Error::other("no reply within 10 s"))?
    }

    /// The port of the redis-server this connection reached.
    async fn server_port(&mut self) -> std::io::Result<u16> {
        let info = self.command(&["INFO", "server"]).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("tcp_port:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no tcp_port in INFO: {info}")))
    }
}

/// Reads one simple, integer, error or bulk reply.
async fn read_reply(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => Ok(format!("ERR {rest}")),
        Some(("$", len)) => {
            let Ok(len) = len.parse::<usize>() else {
                return Ok(String::new()); // $-1: nil
            };
            let mut body = vec![0u8; len + 2];
            reader.read_exact(&mut body).await?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(std::io::Error::other(format!("unexpected reply {line:?}"))),
    }
}

/// Runs `redis-cli ARGS` with `input` on its stdin, bounded.
fn redis_cli(args: &[&str], input: &[u8]) -> String {
    require("redis-cli");
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start redis-cli");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).expect("write redis-cli stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("redis-cli {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("redis-cli output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn redis_through_two_sidecars_and_failover() {
    let redis_b = redis_server().await;
    let redis_c = redis_server().await;
    let b = AgentProc::start(
        Spec::new("tcp-b")
            .arg("--service")
            .arg(format!("redis={}", redis_b.port)),
    )
    .await;
    let c = AgentProc::start(
        Spec::new("tcp-c")
            .join(&b)
            .arg("--service")
            .arg(format!("redis={}", redis_c.port)),
    )
    .await;
    let listen = free_port();
    let mut agents = [b, c];
    let a = AgentProc::start(
        Spec::new("tcp-a")
            .join(&agents[0])
            .with_metrics()
            .arg("--tcp")
            .arg(format!("redis=127.0.0.1:{listen}")),
    )
    .await;
    wait_instances_measured(&a, "redis", 2).await;
    let tcp: SocketAddr = ([127, 0, 0, 1], listen).into();
    let port = listen.to_string();

    // redis-cli: one connection, SET then GET.
    let out = redis_cli(&["-p", &port], b"SET greeting hello\nGET greeting\nPING\n");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["OK", "hello", "PONG"],
        "redis-cli through the mesh"
    );

    // redis-cli --pipe: 10,000 commands in the raw protocol on one connection.
    let mut batch = Vec::new();
    for i in 0..10_000 {
        batch.extend(encode(&["SET", &format!("pipe:{i}"), &i.to_string()]));
    }
    let out = redis_cli(&["-p", &port, "--pipe"], &batch);
    assert!(
        out.contains("errors: 0, replies: 10000"),
        "redis-cli --pipe through the mesh: {out}"
    );

    // Our own pipelined client: 10,000 INCRs written at once, every reply
    // read, then a half-close: our EOF reaches redis, which closes, and
    // that EOF comes back to us.
    let conn = Resp::connect(tcp).await.expect("connect to the listener");
    let mut all = Vec::new();
    for _ in 0..10_000 {
        all.extend(encode(&["INCR", "counter"]));
    }
    let Resp {
        mut reader,
        mut writer,
    } = conn;
    let write = tokio::spawn(async move {
        writer.write_all(&all).await.expect("write the batch");
        writer
    });
    let mut last = String::new();
    for _ in 0..10_000 {
        last = tokio::time::timeout(Duration::from_secs(30), read_reply(&mut reader))
            .await
            .expect("pipelined replies within 30 s")
            .expect("a reply");
    }
    let last: u64 = last.parse().expect("INCR answers an integer");
    assert!(last >= 10_000, "10,000 INCRs counted: {last}");
    let mut writer = write.await.expect("writer task");
    writer.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest))
        .await
        .expect("the half-close came back as EOF within 10 s")
        .expect("clean EOF");
    assert_eq!(read, 0, "no bytes after the last reply: {rest:?}");

    // Failover: an open connection, then its instance's node dies.
    let mut open = Resp::connect(tcp).await.expect("connect");
    let first_port = open.server_port().await.expect("INFO through the mesh");
    let (dead, survivor_port) = if first_port == redis_b.port {
        (0, redis_c.port)
    } else {
        assert_eq!(
            first_port, redis_c.port,
            "INFO names one of our redis servers"
        );
        (1, redis_b.port)
    };
    agents[dead].kill();
    let started = Instant::now();
    loop {
        if open.command(&["PING"]).await.is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the open connection to a dead node still answers after 40 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the open connection failed {:?} after its node was killed",
        started.elapsed()
    );
    // New connections go to the survivor (once A stops picking the dead node).
    eventually(
        "new connections to reach the surviving redis",
        Duration::from_secs(40),
        || async move {
            let mut conn = Resp::connect(tcp).await.ok()?;
            (conn.server_port().await.ok()? == survivor_port).then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        let mut conn = Resp::connect(tcp).await.expect("connect after failover");
        assert_eq!(
            conn.server_port().await.expect("INFO after failover"),
            survivor_port,
            "a new connection went to the dead node"
        );
    }

    let text = a.metrics_text().await;
    assert!(
        metric_value(
            &text,
            "gossamer_tcp_connections_total",
            &[("service", "redis")]
        ) >= 10.0,
        "connections counted: {text}"
    );
    assert!(
        metric_value(
            &text,
            "gossamer_tcp_bytes_total",
            &[("service", "redis"), ("direction", "out")]
        ) > 100_000.0,
        "bytes counted"
    );
}

#[tokio::test]
async fn a_hard_requirement_nobody_meets_closes_the_connection_and_says_why() {
    // The only instance of "far" is on B, 30 ms away; the definition asks
    // for 5 ms at most.
    let b = AgentProc::start(Spec::new("tcpfar-b").arg("--service").arg("far=9")).await;
    let listen = free_port();
    let a = AgentProc::start(
        Spec::new("tcpfar-a")
            .join(&b)
            .arg("--debug-link-delay")
            .arg(format!("{}=30", b.listeners.quic))
            .arg("--tcp")
            .arg(format!("far=127.0.0.1:{listen}")),
    )
    .await;
    a.client()
        .put_definition(&mesh_proto::catalog::Definition {
            name: "far".to_owned(),
            version: "1".to_owned(),
            port: None,
            image: None,
            host_port: None,
            repository: None,
            endpoints: Default::default(),
            client_sdks: Default::default(),
            requirements: mesh_proto::catalog::Requirements {
                soft_rtt_ms: None,
                hard_rtt_ms: Some(5),
                cpu_millis: None,
                memory_mb: None,
            },
            content_hash: String::new(),
        })
        .await
        .expect("put the definition");
    wait_instances_measured(&a, "far", 1).await;
    let mut stream = TcpStream::connect(("127.0.0.1", listen))
        .await
        .expect("the listener accepts");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed within 10 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection was not closed: {read:?}"
    );
    eventually("the agent to log why", Duration::from_secs(5), || {
        let log = a.log();
        async move {
            log.lines()
                .any(|l| {
                    l.contains("closed a TCP connection: no instance to send it to")
                        && l.contains("hard RTT 5 ms")
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_reset_by_the_instance_reaches_the_client_through_two_sidecars() {
    // An instance that resets every connection it accepts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = stream;
            let mut buf = [0u8; 4];
            // Read the client's first bytes, so the tunnel is open, then reset.
            let _ = stream.read(&mut buf).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let b = AgentProc::start(
        Spec::new("tcprst-b")
            .arg("--service")
            .arg(format!("rst={port}")),
    )
    .await;
    let listen = free_port();
    let a = AgentProc::start(
        Spec::new("tcprst-a")
            .join(&b)
            .arg("--tcp")
            .arg(format!("rst=127.0.0.1:{listen}")),
    )
    .await;
    wait_instances_measured(&a, "rst", 1).await;
    let mut stream = TcpStream::connect(("127.0.0.1", listen))
        .await
        .expect("connect");
    stream.write_all(b"ping").await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the connection ends within 10 s");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("a reset arrived as a clean EOF after {n} bytes"),
    }
}

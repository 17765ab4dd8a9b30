//! The web UI in a real browser: Debian's `chromium`, headless, against a
//! three-node mesh with link delays of about 5 and 40 ms.
//!
//! One run with JavaScript disabled dumps the DOM and checks the static
//! page (members, the far node's matrix cell over the hard requirement, a
//! routing decision naming its reason, names escaped). A second run drives
//! chromium through the DevTools protocol (a minimal WebSocket client, no
//! new dependency) and checks that an instance registered after the page
//! loaded appears without a reload.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{delayed_trio, eventually, http_get, http_request, register_port};
use mesh_proto::catalog::Definition;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Free text that must render as text, never as markup.
const HOSTILE: &str = "<script>window.pwned=1</script>";

/// The chromium binary, or a failure that says how to install it.
fn chromium() -> PathBuf {
    let candidates = ["chromium", "chromium-browser"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in candidates {
            let file = dir.join(name);
            if file.is_file() {
                return file;
            }
        }
    }
    panic!(
        "chromium is not installed: the UI test needs a real browser. Install Debian's \
         package with `apt-get update && apt-get install -y chromium` (.ci/run does)"
    );
}

fn profile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-ui-chromium-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("create chromium profile dir");
    dir
}

fn headless(profile: &std::path::Path) -> Command {
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Everything between `needle`'s enclosing tag start and the next `</tr>`:
/// good enough to look at one table row of the dump.
fn row_with<'a>(dom: &'a str, needle: &str) -> Option<&'a str> {
    let at = dom.find(needle)?;
    let start = dom[..at].rfind("<tr")?;
    let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
    Some(&dom[start..end])
}

fn cell<'a>(dom: &'a str, from: &str, to: &str) -> Option<&'a str> {
    let needle = format!("data-from=\"{from}\" data-to=\"{to}\"");
    let at = dom.find(&needle)?;
    let start = dom[..at].rfind("<td")?;
    let end = dom[at..].find("</td>").map_or(dom.len(), |e| at + e);
    Some(&dom[start..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_renders_the_mesh_in_a_browser_and_updates_live() {
    chromium();
    let trio = delayed_trio("ui", "echo", false, (5, 40), &[]).await;
    let client = trio.a.client();
    let definition: Definition = serde_json::from_value(serde_json::json!({
        "name": "echo",
        "version": HOSTILE,
        "requirements": { "soft_rtt_ms": 10, "hard_rtt_ms": 30 }
    }))
    .expect("definition");
    client.put_definition(&definition).await.expect("put echo");
    common::wait_instances_measured(&trio.a, "echo", 2).await;
    eventually(
        "ui-c to be over hard 30 ms on a",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let view = client.instances("echo", &Default::default()).await.ok()?;
                (view.hard_rtt_ms == Some(30)
                    && view.eligible.len() == 1
                    && view.ineligible.len() == 1)
                    .then_some(())
            }
        },
    )
    .await;
    for _ in 0..5 {
        let (status, _, body) = http_get(
            trio.a.listeners.proxy,
            "/",
            &[("x-gossamer-service", "echo")],
        )
        .await
        .expect("call echo through a");
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, decisions) = http_get(trio.a.listeners.admin, "/v1/decisions?limit=2", &[])
        .await
        .expect("decisions");
    assert_eq!(status, 200);
    let decisions: serde_json::Value = serde_json::from_str(&decisions).expect("decisions JSON");
    assert_eq!(decisions.as_array().map(Vec::len), Some(2), "{decisions}");

    // --- the static page, JavaScript disabled ---
    let url = format!("http://{}/ui", trio.a.listeners.admin);
    let browser = Browser::launch().await;
    let mut static_page = browser.open("about:blank").await;
    static_page
        .call(
            "Emulation.setScriptExecutionDisabled",
            serde_json::json!({ "value": true }),
        )
        .await
        .expect("disable scripts");
    static_page
        .call("Page.navigate", serde_json::json!({ "url": url }))
        .await
        .expect("navigate");
    let dom = static_page.rendered_html("id=\"decisions\"").await;
    assert!(
        !dom.contains("data-loaded-at"),
        "the script ran although JavaScript was disabled"
    );
    for node in ["ui-a", "ui-b", "ui-c"] {
        let row = row_with(&dom, &format!("data-node=\"{node}\""))
            .unwrap_or_else(|| panic!("no member row for {node}: {dom}"));
        assert!(row.contains("data-state=\"alive\""), "{row}");
    }
    let far = cell(&dom, "ui-a", "ui-c").unwrap_or_else(|| panic!("no matrix cell a→c: {dom}"));
    assert!(
        far.contains("data-source=\"measured\"") && far.contains("data-over-hard=\"true\""),
        "a→c must be measured and over the hard 30 ms: {far}"
    );
    let near = cell(&dom, "ui-a", "ui-b").expect("matrix cell a→b");
    assert!(near.contains("data-over-hard=\"false\""), "{near}");
    let decision =
        row_with(&dom, "class=\"decision\"").unwrap_or_else(|| panic!("no decision: {dom}"));
    assert!(
        decision.contains("ui-b/")
            && decision.contains("over hard RTT")
            && decision.contains("ui-c/"),
        "a decision picks b and says c is over the hard RTT: {decision}"
    );
    assert!(
        dom.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;") && !dom.contains(HOSTILE),
        "the definition's version must render as text"
    );

    // --- live: a registration appears without a reload ---
    let mut page = browser.open(&url).await;
    let loaded_at = page
        .wait_for(
            "the page's script to connect its event stream",
            "document.getElementById('live-status').dataset.state === 'live' \
             ? document.documentElement.dataset.loadedAt : null",
        )
        .await;
    let before = page
        .eval("document.querySelector('[data-service=\"late\"]') === null")
        .await;
    assert_eq!(
        before,
        Some(serde_json::Value::Bool(true)),
        "late is not there yet"
    );
    register_port(&trio.b, "late", trio.echo_ports[0].1).await;
    page.wait_for(
        "the instance registered on b to appear on a's page",
        "document.querySelector('[data-service=\"late\"] tr.instance') !== null ? true : null",
    )
    .await;
    let after = page
        .eval("[document.documentElement.dataset.loadedAt, window.pwned === undefined]")
        .await
        .expect("page state");
    assert_eq!(
        after,
        serde_json::json!([loaded_at, true]),
        "the page must not have reloaded, and the hostile version never ran"
    );
    drop(browser);
}

/// A headless chromium with its DevTools endpoint on a free port.
struct Browser {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Browser {
    async fn launch() -> Self {
        let profile = profile_dir();
        let child = headless(&profile)
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        let file = profile.join("DevToolsActivePort");
        let port = eventually(
            "chromium to write DevToolsActivePort",
            Duration::from_secs(30),
            || {
                let file = file.clone();
                async move {
                    let text = std::fs::read_to_string(file).ok()?;
                    text.lines().next()?.trim().parse::<u16>().ok()
                }
            },
        )
        .await;
        Browser {
            child,
            port,
            profile,
        }
    }

    /// Opens `url` in a new tab and connects to it.
    async fn open(&self, url: &str) -> Page {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, _, body) = http_request(
            addr,
            "PUT",
            &format!("/json/new?{url}"),
            &[("host", "127.0.0.1")],
            Vec::new(),
        )
        .await
        .expect("DevTools /json/new");
        assert_eq!(status, 200, "DevTools /json/new: {body}");
        let target: serde_json::Value = serde_json::from_str(&body).expect("target JSON");
        let ws = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("webSocketDebuggerUrl");
        let path = ws
            .find("/devtools/")
            .map(|at| &ws[at..])
            .unwrap_or_else(|| panic!("no /devtools/ path in {ws}"));
        Page {
            socket: WebSocket::connect(addr, path).await,
            next_id: 0,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab, driven with `Runtime.evaluate`.
struct Page {
    socket: WebSocket,
    next_id: u64,
}

impl Page {
    /// Sends one DevTools command and returns its `result` (None on an
    /// error answer or no answer within 10 s).
    async fn call(&mut self, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(&message.to_string()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = tokio::time::timeout(Duration::from_secs(10), self.socket.receive())
                .await
                .ok()??;
            let reply: serde_json::Value = serde_json::from_str(&text).ok()?;
            if reply["id"].as_u64() == Some(id) {
                return reply.get("result").cloned();
            }
        }
        None
    }

    /// The value of `expression`, or None when it threw or the reply never came.
    async fn eval(&mut self, expression: &str) -> Option<serde_json::Value> {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params).await?;
        if result["exceptionDetails"].is_object() {
            return None;
        }
        Some(result["result"]["value"].clone())
    }

    /// The document as rendered, through the DOM domain (works with
    /// scripts disabled), once it contains `marker` (bounded).
    async fn rendered_html(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let root = self
                .call("DOM.getDocument", serde_json::json!({ "depth": 0 }))
                .await
                .and_then(|r| r["root"]["nodeId"].as_u64());
            if let Some(node) = root {
                let html = self
                    .call("DOM.getOuterHTML", serde_json::json!({ "nodeId": node }))
                    .await
                    .and_then(|r| r["outerHTML"].as_str().map(str::to_owned));
                if let Some(html) = html.filter(|h| h.contains(marker)) {
                    return html;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after 30 s waiting for the page to render"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `expression` until it yields something other than null (bounded).
    async fn wait_for(&mut self, what: &str, expression: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.eval(expression).await {
                Some(value) if !value.is_null() => return value,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "timed out after 30 s waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The smallest WebSocket client DevTools needs: text frames, masked out,
/// unmasked in, fragments joined.
struct WebSocket {
    stream: BufReader<TcpStream>,
}

impl WebSocket {
    async fn connect(addr: std::net::SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect DevTools");
        let mut stream = BufReader::new(stream);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("handshake");
        let mut status = String::new();
        stream
            .read_line(&mut status)
            .await
            .expect("handshake status");
        assert!(
            status.contains(" 101 "),
            "DevTools refused the WebSocket: {status}"
        );
        loop {
            let mut line = String::new();
            let n = stream
                .read_line(&mut line)
                .await
                .expect("handshake headers");
            if n == 0 || line == "\r\n" {
                break;
            }
        }
        WebSocket { stream }
    }

    async fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .get_mut()
            .write_all(&frame)
            .await
            .expect("send frame");
    }

    /// The next text message; None when the socket closed.
    async fn receive(&mut self) -> Option<String> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.ok()?;
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await.ok()?),
                127 => self.stream.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mask = if head[1] & 0x80 != 0 {
                let mut mask = [0u8; 4];
                self.stream.read_exact(&mut mask).await.ok()?;
                Some(mask)
            } else {
                None
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            self.stream.read_exact(&mut payload).await.ok()?;
            if let Some(mask) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match opcode {
                0x8 => return None,
                0x0..=0x2 => message.extend_from_slice(&payload),
                _ => continue,
            }
            if fin {
                return Some(String::from_utf8_lossy(&message).into_owned());
            }
        }
    }
}

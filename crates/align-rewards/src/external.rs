//! External rewards: scorers that live outside Rust (a Python reward model, a VLM judge, a
//! human-rating service), reached through a local **command** or a **loopback HTTP endpoint**.
//!
//! Images are sent as 8-bit PNGs (`u = clamp((x + 1) · 127.5, 0, 255)` per channel, the
//! quantisation of [`align_data::Image::to_rgb8`]) together with their prompts; the scorer
//! answers one JSON object `{"scores": [s_0, …, s_{B−1}]}` with one finite number per image.
//!
//! - [`CommandReward`] runs `program args…` once per batch. The PNGs are written to a fresh
//!   temporary directory and the request `{"prompts": [...], "images": ["/tmp/…/0.png", …]}`
//!   is written to the program's stdin; the scores are read from its stdout. The directory is
//!   removed afterwards, whatever happened.
//! - [`HttpReward`] POSTs `{"prompts": [...], "images_png_base64": [...]}` (standard base64)
//!   as `application/json` to an `http://127.0.0.1:PORT/…` or `http://localhost:PORT/…` URL.
//!   Only loopback addresses are accepted: the scorer runs on the training machine. Plain
//!   HTTP/1.1 to loopback needs a few dozen lines over [`std::net::TcpStream`], so no HTTP or
//!   TLS stack is pulled in.
//!
//! Both have a timeout (the child is killed, the connection dropped) and report every failure —
//! cannot start, timeout, non-zero exit, HTTP error status, malformed or wrong-length answers,
//! non-finite scores — as [`RewardError::External`] naming the scorer, with an excerpt of what
//! it said. A failed call changes nothing on the caller's side: the batch can be scored again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use burn::prelude::*;
use serde::Deserialize;

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, check_finite, tensor_to_images};

/// Longest excerpt of a scorer's output quoted in an error.
const EXCERPT: usize = 300;

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() <= EXCERPT {
        text.to_string()
    } else {
        let cut: String = text.chars().take(EXCERPT).collect();
        format!("{cut}…")
    }
}

fn external(reward: &str, reason: impl Into<String>) -> RewardError {
    RewardError::External {
        reward: reward.to_string(),
        reason: reason.into(),
    }
}

/// Encodes each image of the batch as a PNG.
fn encode_pngs(reward: &str, images: &Tensor<4>) -> Result<Vec<Vec<u8>>> {
    tensor_to_images(images)?
        .iter()
        .enumerate()
        .map(|(index, im)| {
            let rgb = image::RgbImage::from_raw(im.width as u32, im.height as u32, im.to_rgb8())
                .ok_or_else(|| RewardError::Encode {
                    reward: reward.to_string(),
                    index,
                    reason: "buffer size does not match the image".into(),
                })?;
            let mut out = std::io::Cursor::new(Vec::new());
            rgb.write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| RewardError::Encode {
                    reward: reward.to_string(),
                    index,
                    reason: e.to_string(),
                })?;
            Ok(out.into_inner())
        })
        .collect()
}

#[derive(Deserialize)]
struct Answer {
    scores: Vec<f64>,
}

/// Parses `{"scores": [...]}` and checks its length and finiteness.
fn parse_scores(reward: &str, body: &[u8], batch: usize) -> Result<Vec<f64>> {
    // Non-finite numbers are not JSON; `NaN` in the body is a parse error, named as such.
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        external(
            reward,
            format!(
                "malformed answer ({e}); expected {{\"scores\": [...]}}, got `{}`",
                excerpt(body)
            ),
        )
    })?;
    if answer.scores.len() != batch {
        return Err(external(
            reward,
            format!(
                "returned {} scores for a batch of {batch} images",
                answer.scores.len()
            ),
        ));
    }
    check_finite(reward, &answer.scores)?;
    Ok(answer.scores)
}

/// A reward computed by a local program (see the module docs for the protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReward {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Removes the request directory when the call ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl CommandReward {
    /// A reward that runs `program args…`, named `"external_command"`, with a 60 s timeout.
    ///
    /// # Errors
    /// [`RewardError::Config`] if `program` is empty.
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Result<Self> {
        let program = program.into();
        if program.as_os_str().is_empty() {
            return Err(RewardError::config("program", "is empty"));
        }
        Ok(Self {
            name: "external_command".into(),
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            timeout: Duration::from_secs(60),
        })
    }

    /// Sets the reward's name (used in logs and errors).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the time the program may take per batch.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a zero timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(RewardError::config("timeout", "must be positive"));
        }
        self.timeout = timeout;
        Ok(self)
    }

    fn run(&self, dir: &Path, request: &[u8], batch: usize) -> Result<Vec<f64>> {
        let what = format!("`{}`", self.program.display());
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| external(&self.name, format!("cannot start {what}: {e}")))?;
        // Output is drained on threads so a chatty program cannot block on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input is judged by its exit status.
            let _ = stdin.write_all(request);
        }
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(external(
                        &self.name,
                        format!("{what} timed out after {:.1} s", self.timeout.as_secs_f64()),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(external(&self.name, format!("waiting for {what}: {e}"))),
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(external(
                &self.name,
                format!("{what} failed ({status}); stderr: `{}`", excerpt(&err)),
            ));
        }
        parse_scores(&self.name, &out, batch)
    }
}

impl Reward for CommandReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn scale(&self) -> &str {
        "external (as returned by the command)"
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let [b, ..] = check_batch(&self.name, images, prompts)?;
        let pngs = encode_pngs(&self.name, images)?;
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let dir =
            TempDir(std::env::temp_dir().join(format!("align-reward-{}-{n}", std::process::id())));
        let io = |e: std::io::Error| external(&self.name, format!("{}: {e}", dir.0.display()));
        std::fs::create_dir_all(&dir.0).map_err(io)?;
        let mut paths = Vec::with_capacity(b);
        for (i, png) in pngs.iter().enumerate() {
            let path = dir.0.join(format!("{i}.png"));
            std::fs::write(&path, png).map_err(io)?;
            paths.push(path.display().to_string());
        }
        let request = serde_json::json!({ "prompts": prompts, "images": paths }).to_string();
        self.run(&dir.0, request.as_bytes(), b)
    }
}

/// A reward computed by a loopback HTTP service (see the module docs for the protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReward {
    name: String,
    url: String,
    addr: SocketAddr,
    host: String,
    path: String,
    timeout: Duration,
}

impl HttpReward {
    /// A reward that POSTs to `url` (`http://127.0.0.1:PORT/path`, `http://localhost:PORT/path`
    /// or `http://[::1]:PORT/path`), named `"external_http"`, with a 30 s timeout.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a URL that is not `http://`, has no valid port, or names
    /// a host other than the loopback.
    pub fn new(url: &str) -> Result<Self> {
        let bad = |reason: &str| RewardError::config("url", format!("`{url}`: {reason}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs to this machine are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
                let port: u16 = p.parse().map_err(|_| bad("the port is not a number"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        let ip = match host {
            "localhost" | "127.0.0.1" => std::net::IpAddr::from([127, 0, 0, 1]),
            "[::1]" => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            _ => {
                return Err(bad(
                    "only loopback hosts (127.0.0.1, localhost, [::1]) are allowed",
                ));
            }
        };
        Ok(Self {
            name: "external_http".into(),
            url: url.to_string(),
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            path: path.to_string(),
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets the reward's name (used in logs and errors).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the time one request may take (connect, send, and receive the whole answer).
    ///
    /// # Errors
    /// [`RewardError::Config`] for a zero timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(RewardError::config("timeout", "must be positive"));
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// Sends `body` and returns the answer's body, after checking for a 2xx status.
    fn post(&self, body: &[u8]) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        let io = |stage: &str, e: std::io::Error| {
            let reason = if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                format!(
                    "{} timed out after {:.1} s ({stage})",
                    self.url,
                    self.timeout.as_secs_f64()
                )
            } else {
                format!("{} ({stage}): {e}", self.url)
            };
            external(&self.name, reason)
        };
        let mut stream =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| io("connect", e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .and_then(|_| stream.set_read_timeout(Some(self.timeout)))
            .map_err(|e| io("configure", e))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(body))
            .map_err(|e| io("send", e))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut header_end = None;
        let mut content_length = None;
        loop {
            if let (Some(h), Some(n)) = (header_end, content_length)
                && response.len() >= h + n
            {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(io("receive", std::io::ErrorKind::TimedOut.into()));
            }
            stream
                .set_read_timeout(Some(remaining))
                .map_err(|e| io("configure", e))?;
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("receive", e)),
            };
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
            if header_end.is_none()
                && let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n")
            {
                header_end = Some(i + 4);
                content_length = String::from_utf8_lossy(&response[..i])
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            }
        }
        let Some(h) = header_end else {
            return Err(external(
                &self.name,
                format!(
                    "{} sent no complete HTTP header: `{}`",
                    self.url,
                    excerpt(&response)
                ),
            ));
        };
        let status_line = String::from_utf8_lossy(&response[..h]);
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                external(
                    &self.name,
                    format!("{} sent a malformed status line: `{}`", self.url, {
                        excerpt(status_line.lines().next().unwrap_or("").as_bytes())
                    }),
                )
            })?;
        let end = content_length.map_or(response.len(), |n| (h + n).min(response.len()));
        let body = response[h..end].to_vec();
        if !(200..300).contains(&status) {
            return Err(external(
                &self.name,
                format!("{} answered HTTP {status}: `{}`", self.url, excerpt(&body)),
            ));
        }
        Ok(body)
    }
}

impl Reward for HttpReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn scale(&self) -> &str {
        "external (as returned by the service)"
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let [b, ..] = check_batch(&self.name, images, prompts)?;
        let engine = base64::engine::general_purpose::STANDARD;
        let pngs: Vec<String> = encode_pngs(&self.name, images)?
            .iter()
            .map(|p| engine.encode(p))
            .collect();
        let request =
            serde_json::json!({ "prompts": prompts, "images_png_base64": pngs }).to_string();
        let body = self.post(request.as_bytes())?;
        parse_scores(&self.name, &body, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn batch() -> (Tensor<4>, Vec<String>) {
        let device = align_core::test_device();
        // Image 0 is all −1 (black), image 1 all 0.2 (u = 153), image 2 a ramp.
        let n = 3 * 4 * 4;
        let mut data = vec![-1.0f32; n];
        data.extend(vec![0.2f32; n]);
        data.extend((0..n).map(|i| i as f32 / n as f32 * 2.0 - 1.0));
        let images = Tensor::from_data(TensorData::new(data, [3, 3, 4, 4]), &device);
        let prompts = ["one red circle", "two blue squares", "x"]
            .map(String::from)
            .to_vec();
        (images, prompts)
    }

    /// Mean 8-bit value of each image, as the test scorers compute it.
    fn mean_u8(images: &Tensor<4>) -> Vec<f64> {
        tensor_to_images(images)
            .unwrap()
            .iter()
            .map(|im| {
                let rgb = im.to_rgb8();
                rgb.iter().map(|&u| f64::from(u)).sum::<f64>() / rgb.len() as f64
            })
            .collect()
    }

    fn script(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("align-ext-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    fn is_external(e: &RewardError, needle: &str) -> bool {
        matches!(e, RewardError::External { .. }) && e.to_string().contains(needle)
    }

    /// A scorer that needs nothing beyond Python's standard library: number of prompt words
    /// + 1000 if the image file exists and starts with the PNG signature.
    const WORDS_PY: &str = r#"
import json, sys
req = json.load(sys.stdin)
out = []
for p, path in zip(req["prompts"], req["images"]):
    sig = open(path, "rb").read(8)
    out.append(len(p.split()) + (1000 if sig == b"\x89PNG\r\n\x1a\n" else 0))
print(json.dumps({"scores": out}))
"#;

    #[test]
    fn command_round_trip() {
        let (images, prompts) = batch();
        let path = script("words.py", WORDS_PY);
        let reward = CommandReward::new("python3", &[path.to_str().unwrap()])
            .unwrap()
            .with_name("words");
        let scores = reward.score(&images, &prompts).unwrap();
        assert_eq!(scores, vec![1003.0, 1003.0, 1001.0]);
        assert_eq!(reward.name(), "words");
        assert!(reward.score_differentiable(images, &prompts).is_none());
    }

    #[test]
    fn command_failures_are_clear_errors() {
        let (images, prompts) = batch();
        let run = |body: &str, name: &str, timeout: Duration| {
            let path = script(name, body);
            CommandReward::new("sh", &[path.to_str().unwrap()])
                .unwrap()
                .with_timeout(timeout)
                .unwrap()
                .score(&images, &prompts)
                .unwrap_err()
        };
        let long = Duration::from_secs(20);
        let e = run("sleep 30\n", "sleep.sh", Duration::from_millis(500));
        assert!(is_external(&e, "timed out"), "{e}");
        let e = run("echo 'not json'\n", "garbage.sh", long);
        assert!(is_external(&e, "malformed answer") && e.to_string().contains("not json"));
        let e = run("echo 'model not found' >&2; exit 3\n", "fail.sh", long);
        assert!(
            is_external(&e, "model not found") && e.to_string().contains('3'),
            "{e}"
        );
        let e = run("echo '{\"scores\": [1, 2]}'\n", "short.sh", long);
        assert!(is_external(&e, "returned 2 scores for a batch of 3"), "{e}");
        let e = CommandReward::new("/no/such/program", &[])
            .unwrap()
            .score(&images, &prompts)
            .unwrap_err();
        assert!(is_external(&e, "cannot start"), "{e}");
        assert!(CommandReward::new("", &[]).is_err());
        assert!(
            CommandReward::new("sh", &[])
                .unwrap()
                .with_timeout(Duration::ZERO)
                .is_err()
        );
    }

    /// Serves one connection: reads the request, answers with `reply(body)`.
    fn serve_once(reply: impl FnOnce(Vec<u8>) -> Option<String> + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    while buf.len() < i + 4 + len {
                        let n = s.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break buf[i + 4..i + 4 + len].to_vec();
                }
            };
            match reply(body) {
                Some(response) => {
                    let _ = s.write_all(response.as_bytes());
                }
                // Never answer: hold the connection until the client gives up.
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        });
        format!("http://127.0.0.1:{port}/score")
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn http_round_trip_decodes_the_images() {
        let (images, prompts) = batch();
        let url = serve_once(|body| {
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let engine = base64::engine::general_purpose::STANDARD;
            let scores: Vec<f64> = req["images_png_base64"]
                .as_array()
                .unwrap()
                .iter()
                .zip(req["prompts"].as_array().unwrap())
                .map(|(b64, p)| {
                    let png = engine.decode(b64.as_str().unwrap()).unwrap();
                    let im = image::load_from_memory(&png).unwrap().to_rgb8();
                    let mean = im.as_raw().iter().map(|&u| f64::from(u)).sum::<f64>()
                        / im.as_raw().len() as f64;
                    mean + 1000.0 * p.as_str().unwrap().split(' ').count() as f64
                })
                .collect();
            Some(ok(&serde_json::json!({ "scores": scores }).to_string()))
        });
        let scores = HttpReward::new(&url)
            .unwrap()
            .score(&images, &prompts)
            .unwrap();
        let means = mean_u8(&images);
        let words = [3.0, 3.0, 1.0];
        for i in 0..3 {
            assert!((scores[i] - (means[i] + 1000.0 * words[i])).abs() < 1e-6);
        }
        // Black is 0 and 0.2 ↦ 153 after 8-bit quantisation: PNG is lossless.
        assert_eq!(scores[0], 3000.0);
        assert_eq!(scores[1], 3153.0);
    }

    #[test]
    fn http_failures_are_clear_errors() {
        let (images, prompts) = batch();
        let score = |url: &str, timeout_ms: u64| {
            HttpReward::new(url)
                .unwrap()
                .with_timeout(Duration::from_millis(timeout_ms))
                .unwrap()
                .score(&images, &prompts)
                .unwrap_err()
        };
        let silent = serve_once(|_| None);
        let e = score(&silent, 500);
        assert!(is_external(&e, "timed out"), "{e}");
        let garbage = serve_once(|_| Some(ok("hello")));
        let e = score(&garbage, 10_000);
        assert!(is_external(&e, "malformed answer") && e.to_string().contains("hello"));
        let nan = serve_once(|_| Some(ok("{\"scores\": [1, NaN, 2]}")));
        assert!(is_external(&score(&nan, 10_000), "malformed answer"));
        let server_error = serve_once(|_| {
            Some("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops".into())
        });
        let e = score(&server_error, 10_000);
        assert!(
            is_external(&e, "HTTP 500") && e.to_string().contains("oops"),
            "{e}"
        );
        // The caller's batch is untouched and can be scored again.
        assert_eq!(images.dims(), [3, 3, 4, 4]);
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        for url in [
            "http://127.0.0.1:8000/score",
            "http://localhost:9/",
            "http://[::1]:8080",
        ] {
            assert!(HttpReward::new(url).is_ok(), "{url}");
        }
        for url in [
            "https://127.0.0.1:8000/",
            "http://example.com:80/",
            "http://10.0.0.2:8000/",
            "http://127.0.0.1:notaport/",
            "ftp://localhost/",
        ] {
            assert!(
                matches!(HttpReward::new(url), Err(RewardError::Config { .. })),
                "{url}"
            );
        }
        assert!(
            HttpReward::new("http://127.0.0.1:1/")
                .unwrap()
                .with_timeout(Duration::ZERO)
                .is_err()
        );
    }
}

//! External rewards: scorers that live outside Rust (a Python reward model, a VLM judge, a
//! human-rating service), reached through a local **command** or an **HTTP endpoint**.
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
//!   as `application/json` to a URL, through the `ureq` client (chunked and fixed-length
//!   answers, a timeout per request). [`HttpReward::new`] accepts only this machine
//!   (`127.0.0.1`, `localhost`, `[::1]`); [`HttpReward::remote`] any host (the images leave
//!   the machine), `https://` with the crate's `tls` feature. `with_batch(n)` sends at most
//!   `n` images per request; `with_retries(n)` retries connection failures, timeouts and 5xx
//!   answers with a growing pause (a 4xx or a malformed answer is not retried).
//!
//! Both have a timeout (the child is killed, the connection dropped) and report every failure —
//! cannot start, timeout, non-zero exit, HTTP error status, malformed or wrong-length answers,
//! non-finite scores — as [`RewardError::External`] naming the scorer, with an excerpt of what
//! it said. A failed call changes nothing on the caller's side: the batch can be scored again.

use std::io::{Read, Write};
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

/// Parses a reward program's or server's answer, `{"scores": [...]}`, and checks its length
/// (`batch`) and finiteness; `reward` names the reward in errors. [`CommandReward`] and
/// [`HttpReward`] parse every answer with it; it is public for fuzzing and for users writing
/// their own transport.
///
/// # Errors
/// [`RewardError::External`] for a body that is not that JSON (quoting an excerpt) or holds
/// the wrong number of scores; [`RewardError::NonFinite`] for a NaN or infinite score.
pub fn parse_scores(reward: &str, body: &[u8], batch: usize) -> Result<Vec<f64>> {
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

/// A reward computed by an HTTP service (see the module docs for the protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReward {
    name: String,
    url: String,
    timeout: Duration,
    batch: usize,
    retries: u32,
    remote: bool,
}

/// Whether `host` (as written in a URL) is this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl HttpReward {
    /// A reward that POSTs to `url` on this machine (`http://127.0.0.1:PORT/path`,
    /// `http://localhost:PORT/path`, `http://[::1]:PORT/path`), named `"external_http"`, with
    /// a 30 s timeout per request, the whole batch in one request and no retries. Proxy
    /// settings of the environment are ignored: the connection stays on the machine.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a URL that does not parse, is not `http://`, or names a
    /// host other than the loopback (use [`HttpReward::remote`] for those).
    pub fn new(url: &str) -> Result<Self> {
        let mut reward = Self::remote(url)?;
        reward.remote = false;
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| RewardError::config("url", format!("`{url}`: {e}")))?;
        if uri.scheme_str() != Some("http") || !uri.host().is_some_and(is_loopback) {
            return Err(RewardError::config(
                "url",
                format!(
                    "`{url}`: only http:// to this machine (127.0.0.1, localhost, [::1]) \
                     unless the reward allows remote hosts (`allow_remote = true`)"
                ),
            ));
        }
        Ok(reward)
    }

    /// A reward that POSTs to `url` on any host: `http://`, or `https://` when `align-rewards`
    /// is built with its `tls` feature, through the proxy `ALL_PROXY` / `HTTPS_PROXY` /
    /// `HTTP_PROXY` name if any (`NO_PROXY` honoured). The images leave the machine: use it for
    /// a scorer you run or trust.
    ///
    /// # Errors
    /// [`RewardError::Config`] for a URL that does not parse or whose scheme is not supported.
    pub fn remote(url: &str) -> Result<Self> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| RewardError::config("url", format!("`{url}`: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if cfg!(feature = "tls") => {}
            Some("https") => {
                return Err(RewardError::config(
                    "url",
                    format!(
                        "`{url}`: https needs align-rewards' `tls` feature (or a TLS-terminating \
                         proxy on this machine)"
                    ),
                ));
            }
            _ => {
                return Err(RewardError::config(
                    "url",
                    format!("`{url}`: only http:// (and https:// with the `tls` feature)"),
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(RewardError::config("url", format!("`{url}`: no host")));
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once("]:").map(|(_, p)| p),
            None => authority.split_once(':').map(|(_, p)| p),
        };
        if port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(RewardError::config(
                "url",
                format!("`{url}`: the port is not a number"),
            ));
        }
        Ok(Self {
            name: "external_http".into(),
            url: url.to_string(),
            timeout: Duration::from_secs(30),
            batch: 0,
            retries: 0,
            remote: true,
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

    /// Sends at most `batch` images per request (0 = the whole batch in one request); the
    /// scores are joined in order.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Retries a request that fails to connect, times out or gets an HTTP 5xx answer up to
    /// `retries` more times, waiting 0.2 s, 0.4 s, … (at most 5 s) in between. A 4xx answer
    /// or a malformed body is not retried: sending the same request again would not help.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sends `body` once; `Err((retryable, reason))`.
    fn post_once(&self, body: &[u8]) -> std::result::Result<Vec<u8>, (bool, String)> {
        // A loopback scorer is reached directly, whatever `HTTP_PROXY` / `ALL_PROXY` say: the
        // images must not leave the machine through a proxy. A remote one honours them.
        let proxy = if self.remote {
            ureq::Proxy::try_from_env()
        } else {
            None
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(proxy)
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let response = agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Err((
                    true,
                    format!("timed out after {:.1} s", self.timeout.as_secs_f64()),
                ));
            }
            Err(e) => return Err((true, e.to_string())),
        };
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => (
                    true,
                    format!("timed out after {:.1} s", self.timeout.as_secs_f64()),
                ),
                e => (true, format!("reading the answer: {e}")),
            })?;
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err((
                status >= 500,
                format!("answered HTTP {status}: `{}`", excerpt(&answer)),
            ))
        }
    }

    /// Sends `body` with the retries, returning the 2xx answer's body.
    fn post(&self, body: &[u8]) -> Result<Vec<u8>> {
        let mut attempt = 0;
        loop {
            match self.post_once(body) {
                Ok(answer) => return Ok(answer),
                Err((retry, reason)) if !retry || attempt >= self.retries => {
                    let tries = if attempt > 0 {
                        format!(" (after {} attempts)", attempt + 1)
                    } else {
                        String::new()
                    };
                    return Err(external(
                        &self.name,
                        format!("{} {reason}{tries}", self.url),
                    ));
                }
                Err(_) => {
                    let wait = (200u64 << attempt.min(5)).min(5000);
                    std::thread::sleep(Duration::from_millis(wait));
                    attempt += 1;
                }
            }
        }
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
        let size = if self.batch == 0 {
            b
        } else {
            self.batch.min(b)
        };
        let mut scores = Vec::with_capacity(b);
        for start in (0..b).step_by(size.max(1)) {
            let end = (start + size).min(b);
            let request = serde_json::json!({
                "prompts": &prompts[start..end],
                "images_png_base64": &pngs[start..end],
            })
            .to_string();
            let body = self.post(request.as_bytes())?;
            let part = parse_scores(&self.name, &body, end - start).map_err(|e| match e {
                RewardError::External { reward, reason } => RewardError::External {
                    reward,
                    reason: format!("{} (images {start}..{end}): {reason}", self.url),
                },
                other => other,
            })?;
            scores.extend(part);
        }
        Ok(scores)
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

    /// Reads one HTTP request from `s` and returns its body (`Content-Length` bytes after the
    /// header; empty if the client goes away).
    fn read_request(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return Vec::new();
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                while buf.len() < i + 4 + len {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return buf[i + 4..].to_vec();
            }
        }
    }

    /// Serves one connection: reads the request, answers with `reply(body)`.
    fn serve_once(reply: impl FnOnce(Vec<u8>) -> Option<String> + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let body = read_request(&mut s);
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

    /// What the scripted server does with one request.
    enum Reply {
        /// Answer with these raw bytes.
        Raw(String),
        /// Wait, then answer.
        After(Duration, String),
    }

    /// Serves one connection per reply, in order; returns the URL and the number of images
    /// each request carried.
    fn serve(replies: Vec<Reply>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for reply in replies {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let log = log.clone();
                // Each connection on its own thread: a slow answer does not hold the next.
                std::thread::spawn(move || {
                    let body = read_request(&mut s);
                    let images = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["images_png_base64"].as_array().map(Vec::len))
                        .unwrap_or(0);
                    log.lock().unwrap().push(images);
                    let (wait, answer) = match reply {
                        Reply::Raw(a) => (Duration::ZERO, a),
                        Reply::After(d, a) => (d, a),
                    };
                    std::thread::sleep(wait);
                    let _ = s.write_all(answer.as_bytes());
                });
            }
        });
        (format!("http://127.0.0.1:{port}/score"), seen)
    }

    /// A 200 answer with `scores` in a chunked body (split in the middle of the JSON).
    fn chunked(scores: &[f64]) -> String {
        let body = serde_json::json!({ "scores": scores }).to_string();
        let (a, b) = body.split_at(body.len() / 2);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
    }

    /// The served reward of `HttpReward`: chunked answers, batches split across requests,
    /// 5xx answers retried, slow answers within the timeout, and — when every attempt fails —
    /// a clear error naming the URL, the cause and the attempts, with the batch intact.
    #[test]
    fn http_chunked_batched_retried_and_slow_answers() {
        let (images, prompts) = batch();
        let unavailable = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        // Batch 2 of 3 images: two requests (2 + 1); the first is refused once (503) and
        // retried; answers are chunked; the last comes after 300 ms, within the 5 s timeout.
        let (url, seen) = serve(vec![
            Reply::Raw(unavailable.into()),
            Reply::Raw(chunked(&[1.0, 2.0])),
            Reply::After(Duration::from_millis(300), chunked(&[3.0])),
        ]);
        let reward = HttpReward::new(&url)
            .unwrap()
            .with_batch(2)
            .with_retries(2)
            .with_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            reward.score(&images, &prompts).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        assert_eq!(*seen.lock().unwrap(), vec![2, 2, 1]);
        // Too slow every time: two attempts, then an error that says so.
        let late = || Reply::After(Duration::from_millis(1500), chunked(&[1.0, 2.0, 3.0]));
        let (url, seen) = serve(vec![late(), late()]);
        let e = HttpReward::new(&url)
            .unwrap()
            .with_retries(1)
            .with_timeout(Duration::from_millis(400))
            .unwrap()
            .score(&images, &prompts)
            .unwrap_err();
        assert!(
            is_external(&e, "timed out") && e.to_string().contains("after 2 attempts"),
            "{e}"
        );
        assert!(e.to_string().contains(&url), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 2);
        // A 4xx is not retried; a wrong number of scores is named.
        let (url, seen) = serve(vec![Reply::Raw(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad".into(),
        )]);
        let e = HttpReward::new(&url)
            .unwrap()
            .with_retries(3)
            .score(&images, &prompts)
            .unwrap_err();
        assert!(is_external(&e, "HTTP 400"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
        let (url, _) = serve(vec![Reply::Raw(chunked(&[1.0]))]);
        let e = HttpReward::new(&url)
            .unwrap()
            .score(&images, &prompts)
            .unwrap_err();
        assert!(is_external(&e, "returned 1 scores for a batch of 3"), "{e}");
        assert_eq!(images.dims(), [3, 3, 4, 4]);
        // Remote hosts need `remote`; https needs the `tls` feature.
        assert!(HttpReward::new("http://example.com/score").is_err());
        assert!(HttpReward::remote("http://example.com/score").is_ok());
        assert_eq!(
            HttpReward::remote("https://example.com/score").is_ok(),
            cfg!(feature = "tls")
        );
    }
}

//! Requests to the services' HTTP APIs on loopback (a `reqwest` client per request:
//! every `#[tokio::test]` has its own runtime, which a pooled connection must not
//! outlive), and reading their Prometheus metrics and base64 fields.

use base64::Engine;

/// An HTTP response read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Send one request to `http://{addr}{path}` and read the whole response. Connection
/// failures come back as `io::Error`s, as a bare socket's would.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    // The workspace's reqwest has no bundled TLS provider and panics without one.
    aifab_core::artifacts::install_tls_provider();
    let client = reqwest::Client::builder()
        // Loopback only: a proxy from the environment must not see test traffic.
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(std::io::Error::other)?;
    let mut req = client
        .request(method, format!("http://{addr}{path}"))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).to_string();
            (k.as_str().to_string(), v)
        })
        .collect();
    let body = resp.bytes().await.map_err(std::io::Error::other)?;
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// GET a path on loopback: status code and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let r = http_request(addr, "GET", path, &[], b"").await?;
    Ok((r.status, r.body))
}

/// POST a JSON body; the status and the response body.
pub async fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
    let r = http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"));
    (r.status, r.body)
}

/// The value of the first line of a Prometheus text page that starts with `line_prefix`
/// (a metric name with its labels, as rendered).
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Decode standard base64 (with or without padding); panics on bad input.
pub fn base64_decode(s: &str) -> Vec<u8> {
    // Padding is optional on the way in; the alphabet is the standard one.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {s:?}"))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn base64_with_or_without_padding() {
        assert_eq!(base64_decode("aGk="), b"hi");
        assert_eq!(base64_decode("aGk"), b"hi");
        assert_eq!(base64_decode(""), b"");
        assert_eq!(base64_decode("+/8="), [0xfb, 0xff]);
    }

    #[test]
    #[should_panic(expected = "not base64")]
    fn base64_refuses_other_alphabets() {
        base64_decode("-_8=");
    }

    /// A one-shot server on loopback answering `reply` to the first request, which it
    /// hands back.
    async fn serve_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // The request is small: read until its head and its 2-byte body are in.
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n{}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "the client hung up: {}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_request_and_its_response() {
        let (addr, seen) = serve_once(
            "HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\nRetry-After: 3\r\n\
             Connection: close\r\n\r\nbusy",
        )
        .await;
        let r = http_request(&addr, "POST", "/v1/x?a=1", &[("X-Key", "k")], b"{}")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (409, "busy"));
        assert_eq!(r.header("Retry-After"), Some("3"));
        let request = seen.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("post /v1/x?a=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("x-key: k\r\n"), "{request}");
    }

    #[tokio::test]
    async fn nothing_listening_is_an_io_error() {
        let port = crate::stack::free_port();
        assert!(http_get(&format!("127.0.0.1:{port}"), "/").await.is_err());
    }

    #[test]
    fn metric_reads_the_first_matching_line() {
        let page = "# TYPE x counter\nx{a=\"1\"} 3\nx{a=\"2\"} 4.5\n";
        assert_eq!(metric(page, "x{a=\"2\"}"), Some(4.5));
        assert_eq!(metric(page, "x{"), Some(3.0));
        assert_eq!(metric(page, "y"), None);
    }
}

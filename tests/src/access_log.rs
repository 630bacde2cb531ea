//! Reading which requests a registry served, from its access log.
//!
//! distribution 2.8 (`docker-registry`) writes two lines per request to its output:
//!
//! ```text
//! time="…" level=info msg="response completed" … http.request.method=HEAD http.request.uri="/v2/app/manifests/1" … http.response.status=200 …
//! 127.0.0.1 - - [27/Nov/2026:07:07:53 +0000] "HEAD /v2/app/manifests/1 HTTP/1.1" 200 943 "" "curl/7.88.1"
//! ```
//!
//! The first (logrus) line depends on the outcome and the log level: a failed request gets
//! `level=error msg="response completed with error"` with `err.code=...` instead, and at the
//! `warn` level the harness uses only those error lines remain. The second, Apache "combined"
//! line goes to stdout for every request whatever its status and the log level (it is switched
//! by `log.accesslog.disabled`), so that is the one parsed here.

/// One request the registry served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// The request path without query, e.g. `/v2/app/manifests/1`.
    pub path: String,
    /// The query string without `?`, empty if none.
    pub query: String,
    /// The response status.
    pub status: u16,
    /// The client's `User-Agent` (the engine's starts with `docker/`).
    pub user_agent: String,
}

impl AccessEntry {
    /// Whether this is `method` on exactly `path` (query ignored).
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.path == path
    }
}

/// Parses every access line of a registry log, skipping all other lines.
pub fn parse_access_log(log: &str) -> Vec<AccessEntry> {
    log.lines().filter_map(parse_access_line).collect()
}

/// Parses one Apache combined-format line; `None` for anything else.
pub fn parse_access_line(line: &str) -> Option<AccessEntry> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, after_date) = line.split_once("] \"")?;
    let (request, rest) = after_date.split_once('"')?;
    let mut request = request.split(' ');
    let method = request.next()?.to_owned();
    let uri = request.next()?;
    if !request.next()?.starts_with("HTTP/") {
        return None;
    }
    let mut rest_fields = rest.trim_start().splitn(3, ' ');
    let status = rest_fields.next()?.parse().ok()?;
    let _size = rest_fields.next()?;
    // What remains is `"referer" "user agent"`.
    let user_agent = rest_fields
        .next()
        .and_then(|quoted| quoted.split_once("\" \""))
        .map(|(_, ua)| ua.strip_suffix('"').unwrap_or(ua).to_owned())
        .unwrap_or_default();
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    Some(AccessEntry {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        status,
        user_agent,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LOG: &str = r#"time="2026-11-27T07:07:45.4Z" level=info msg="response completed" go.version=go1.19.8 http.request.method=GET http.request.uri="/v2/probe/blobs/sha256:1f" http.response.status=200
127.0.0.1 - - [27/Nov/2026:07:07:45 +0000] "PUT /v2/probe/blobs/uploads/3f33?_state=prr%3D&digest=sha256%3A75 HTTP/1.1" 201 0 "" "docker/20.10.24+dfsg1 go/go1.19.8 UpstreamClient(Docker-Client/28.2.2 \\(linux\\))"
127.0.0.1 - - [27/Nov/2026:07:07:45 +0000] "PUT /v2/probe/manifests/1 HTTP/1.1" 201 0 "" "docker/20.10.24+dfsg1"
127.0.0.1 - - [27/Nov/2026:07:07:53 +0000] "HEAD /v2/probe/manifests/nope HTTP/1.1" 404 94 "" "curl/7.88.1"
time="2026-11-27T07:07:53Z" level=info msg="listening on 127.0.0.1:5123" version=v2.8.2
"#;

    #[test]
    fn parses_only_access_lines() {
        let entries = parse_access_log(LOG);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].method, "PUT");
        assert_eq!(entries[0].path, "/v2/probe/blobs/uploads/3f33");
        assert_eq!(entries[0].query, "_state=prr%3D&digest=sha256%3A75");
        assert_eq!(entries[0].status, 201);
        assert!(entries[0].user_agent.starts_with("docker/20.10.24"));
        assert!(entries[1].is("PUT", "/v2/probe/manifests/1"));
        assert_eq!(
            entries[2],
            AccessEntry {
                method: "HEAD".to_owned(),
                path: "/v2/probe/manifests/nope".to_owned(),
                query: String::new(),
                status: 404,
                user_agent: "curl/7.88.1".to_owned(),
            }
        );
    }
}

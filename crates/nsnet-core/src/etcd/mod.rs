//! A small synchronous etcd v3 client over etcd's JSON/HTTP gateway (`POST /v3/...` on the client port,
//! served by etcd 3.4), for agents that coordinate through etcd. nsnet has no async runtime, so this is plain
//! blocking I/O: one short-lived connection per call, and one long-lived connection per [`Watch`].
//!
//! Every call tries the endpoints in turn, starting with the one that answered last, and moves on only when an
//! endpoint cannot be connected to (then nothing was sent, so nothing can happen twice). Plain `http://` only.

mod http;
mod watch;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use http::Failure;
pub use watch::{Change, Watch, WatchEvent, WatchStopper};

/// How long a unary call waits to connect, and for each read or write after that.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What an etcd call can fail with. Each renders as one line naming the endpoint(s) and what failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A URL given for etcd is not `http://HOST:PORT`, or none was given.
    #[error("{0}")]
    BadUrl(String),
    /// An `https://` URL: nsnet does not speak TLS to etcd yet.
    #[error("etcd URL '{0}': TLS (https://) is not supported yet; use http://")]
    TlsUnsupported(String),
    /// No endpoint accepted a connection (each had the timeout to), so nothing was sent. `why` names each
    /// endpoint and its error.
    #[error("etcd unreachable: {why}")]
    Unreachable { endpoints: Vec<String>, why: String },
    /// The connection broke or timed out after the request went out: etcd may or may not have carried it out.
    #[error("etcd at {endpoint}: {what}: {why}")]
    Connection {
        endpoint: String,
        what: String,
        why: String,
    },
    /// etcd answered with an error status, or ended a stream with an error message; `message` is etcd's own
    /// (with its gRPC code when it gave one).
    #[error("etcd at {endpoint} answered {what} with HTTP {status}: {message}")]
    Http {
        endpoint: String,
        what: String,
        status: u16,
        message: String,
    },
    /// A reply that is not what etcd's gateway sends.
    #[error("etcd at {endpoint}: unexpected reply to {what}: {why}")]
    Protocol {
        endpoint: String,
        what: String,
        why: String,
    },
    /// etcd cancelled the watch (other than for compaction, which is [`WatchEvent::Compacted`]), or
    /// [`Watch::next`] was called again after the watch ended.
    #[error("etcd at {endpoint}: the watch ended: {why}")]
    WatchEnded { endpoint: String, why: String },
    /// [`WatchStopper::stop`] ended the watch.
    #[error("etcd watch stopped")]
    WatchStopped,
}

/// A key and its value as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key; etcd keys are bytes, but nsnet's are UTF-8 (a reply with any other key is a protocol error).
    pub key: String,
    /// The value, as stored.
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last absent).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease's ID, chosen by etcd.
    pub id: i64,
    /// The TTL etcd granted, in seconds (etcd may raise a short one to its minimum).
    pub ttl: i64,
}

/// A client for one etcd cluster. Calls take `&self`, so one `Etcd` can be shared between threads.
#[derive(Debug)]
pub struct Etcd {
    /// `HOST:PORT` of each endpoint.
    endpoints: Vec<String>,
    /// Index of the endpoint that answered last: the next call starts there.
    last: AtomicUsize,
    timeout: Duration,
}

/// The end of the key range that holds every key starting with `prefix` (clientv3's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented. `\0` (every key from the start) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key and range end of a prefix; the empty prefix is every key (`\0` to `\0` in etcd's terms).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    }
}

impl Etcd {
    /// A client for the endpoints in `urls`, each `http://HOST:PORT` or a comma-separated list of them, in the
    /// order to try them. Fails on the first bad URL, or when there is none.
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Result<Etcd, EtcdError> {
        let mut endpoints = Vec::new();
        for list in urls {
            for url in list.as_ref().split(',') {
                let endpoint = http::parse_url(url)?;
                if !endpoints.contains(&endpoint) {
                    endpoints.push(endpoint);
                }
            }
        }
        if endpoints.is_empty() {
            return Err(EtcdError::BadUrl(
                "no etcd URL given (want http://HOST:PORT[,http://HOST:PORT...])".into(),
            ));
        }
        Ok(Etcd {
            endpoints,
            last: AtomicUsize::new(0),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another timeout for unary calls (connect, and each read or write).
    pub fn with_timeout(mut self, timeout: Duration) -> Etcd {
        self.timeout = timeout;
        self
    }

    /// The endpoints, as `HOST:PORT`, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// The key's value, if the key exists.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        const WHAT: &str = "/v3/kv/range";
        let (endpoint, reply): (_, wire::RangeResponse) =
            self.call(WHAT, &wire::RangeRequest::new(key.as_bytes(), None))?;
        let mut kvs = to_kvs(&endpoint, WHAT, reply.kvs)?;
        Ok(kvs.pop())
    }

    /// Every key under `prefix`, sorted by key, and the store revision the listing was taken at (header.revision):
    /// watching from that revision + 1 misses nothing.
    pub fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        const WHAT: &str = "/v3/kv/range";
        let (key, end) = prefix_range(prefix);
        let (endpoint, reply): (_, wire::RangeResponse) =
            self.call(WHAT, &wire::RangeRequest::new(&key, Some(&end)))?;
        Ok((to_kvs(&endpoint, WHAT, reply.kvs)?, reply.header.revision))
    }

    /// Set the key's value, attached to `lease` if given. Returns the revision of the change.
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let request = put_request(key, value, lease);
        let (_, reply): (_, wire::HeaderOnly) = self.call("/v3/kv/put", &request)?;
        Ok(reply.header.revision)
    }

    /// Create the key if it is absent, in one transaction (compare its create revision with 0, then put):
    /// of racing creators exactly one gets true. False if the key existed (it is left as it was).
    pub fn create(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<bool, EtcdError> {
        let request = wire::TxnRequest {
            compare: vec![wire::Compare {
                key: wire::b64(key.as_bytes()),
                target: "CREATE",
                result: "EQUAL",
                create_revision: 0,
            }],
            success: vec![wire::RequestOp {
                request_put: put_request(key, value, lease),
            }],
        };
        let (_, reply): (_, wire::TxnResponse) = self.call("/v3/kv/txn", &request)?;
        Ok(reply.succeeded)
    }

    /// Delete the key; false if it did not exist.
    pub fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let request = wire::DeleteRangeRequest {
            key: wire::b64(key.as_bytes()),
            range_end: None,
        };
        Ok(self.delete_range(&request)? > 0)
    }

    /// Delete every key under `prefix`; returns how many there were.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64, EtcdError> {
        let (key, end) = prefix_range(prefix);
        let request = wire::DeleteRangeRequest {
            key: wire::b64(&key),
            range_end: Some(wire::b64(&end)),
        };
        self.delete_range(&request)
    }

    fn delete_range(&self, request: &wire::DeleteRangeRequest) -> Result<u64, EtcdError> {
        const WHAT: &str = "/v3/kv/deleterange";
        let (endpoint, reply): (_, wire::DeleteRangeResponse) = self.call(WHAT, request)?;
        u64::try_from(reply.deleted).map_err(|_| protocol(&endpoint, WHAT, "negative count"))
    }

    /// A new lease of `ttl_secs` seconds; keys put with it are deleted when it expires or is revoked.
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<Lease, EtcdError> {
        const WHAT: &str = "/v3/lease/grant";
        let request = wire::LeaseGrantRequest { ttl: ttl_secs };
        let (endpoint, reply): (_, wire::LeaseResponse) = self.call(WHAT, &request)?;
        if !reply.error.is_empty() || reply.id == 0 {
            let why = format!("no lease granted ({})", wire::one_line(&reply.error));
            return Err(protocol(&endpoint, WHAT, &why));
        }
        Ok(Lease {
            id: reply.id,
            ttl: reply.ttl,
        })
    }

    /// One keepalive round: the lease's TTL starts again. Returns the TTL, or None when the lease no longer
    /// exists (etcd answers with no TTL).
    pub fn lease_keepalive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        const WHAT: &str = "/v3/lease/keepalive";
        // A streaming call: the gateway answers one `{"result": ...}` per request, then ends with the body.
        let (endpoint, frame): (_, wire::Frame<wire::LeaseResponse>) =
            self.call(WHAT, &wire::LeaseId { id })?;
        match frame {
            wire::Frame {
                result: Some(r), ..
            } => Ok((r.ttl > 0).then_some(r.ttl)),
            wire::Frame { error: Some(e), .. } => Err(stream_error(&endpoint, WHAT, e)),
            _ => Err(protocol(&endpoint, WHAT, "neither result nor error")),
        }
    }

    /// Revoke the lease, deleting its keys. A lease that no longer exists counts as revoked.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call::<wire::HeaderOnly>("/v3/lease/revoke", &wire::LeaseId { id }) {
            Ok(_) => Ok(()),
            // etcdserver: requested lease not found (gRPC NotFound, HTTP 404).
            Err(EtcdError::Http { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Drop the history before `revision` (watches and reads at older revisions then fail). A revision that was
    /// already compacted is not an error: someone else compacted as far or further.
    pub fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let request = wire::CompactionRequest { revision };
        match self.call::<wire::HeaderOnly>("/v3/kv/compaction", &request) {
            Ok(_) => Ok(()),
            Err(EtcdError::Http {
                status: 400,
                message,
                ..
            }) if message.contains("required revision has been compacted") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Watch every key under `prefix` from `start_revision` (inclusive; 0 for "from now") on a long-lived
    /// streaming request, with progress notifications while nothing changes (every 10 minutes by etcd's
    /// default). The connect and the first reply wait at most the timeout; after that [`Watch::next`] waits as
    /// long as it takes.
    pub fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        const WHAT: &str = "/v3/watch";
        let (key, end) = prefix_range(prefix);
        let request = wire::WatchRequest {
            create_request: wire::WatchCreateRequest {
                key: wire::b64(&key),
                range_end: Some(wire::b64(&end)),
                start_revision,
                progress_notify: true,
            },
        };
        let body = self.encode(WHAT, &request)?;
        let (endpoint, (head, reader)) = self.each_endpoint(WHAT, |endpoint| {
            http::open(endpoint, WHAT, &body, self.timeout)
        })?;
        if head.status != 200 {
            let message = match http::read_body(reader, &head) {
                Ok(text) => wire::error_message(&text),
                Err(e) => format!("(the error reply could not be read: {e})"),
            };
            return Err(EtcdError::Http {
                endpoint,
                what: WHAT.into(),
                status: head.status,
                message,
            });
        }
        Watch::new(endpoint, &head, reader)
    }

    /// Run `attempt` against each endpoint, starting with the last one that answered, until one can be
    /// connected to; remembers that one. Returns it with the result. `what` names the call in errors.
    fn each_endpoint<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut(&str) -> Result<T, Failure>,
    ) -> Result<(String, T), EtcdError> {
        let n = self.endpoints.len();
        let start = self.last.load(Ordering::Relaxed);
        let mut whys = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            let endpoint = &self.endpoints[index];
            match attempt(endpoint) {
                Ok(t) => {
                    self.last.store(index, Ordering::Relaxed);
                    return Ok((endpoint.clone(), t));
                }
                Err(Failure::Connect(why)) => whys.push(format!("{endpoint}: {why}")),
                Err(Failure::Exchange(why)) => {
                    return Err(EtcdError::Connection {
                        endpoint: endpoint.clone(),
                        what: what.into(),
                        why,
                    })
                }
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints.clone(),
            why: whys.join("; "),
        })
    }

    fn encode(&self, what: &str, request: &impl Serialize) -> Result<Vec<u8>, EtcdError> {
        // Cannot fail for these plain structs; mapped rather than unwrapped all the same.
        serde_json::to_vec(request)
            .map_err(|e| protocol(&self.endpoints.join(","), what, &e.to_string()))
    }

    /// One unary call: POST `what`, decode a 200 reply as `T`; anything else is an error. Returns the endpoint
    /// that answered with the reply.
    fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        request: &impl Serialize,
    ) -> Result<(String, T), EtcdError> {
        let body = self.encode(what, request)?;
        let (endpoint, (status, reply)) = self.each_endpoint(what, |endpoint| {
            http::post(endpoint, what, &body, self.timeout)
        })?;
        if status != 200 {
            return Err(EtcdError::Http {
                endpoint,
                what: what.into(),
                status,
                message: wire::error_message(&reply),
            });
        }
        match serde_json::from_slice(&reply) {
            Ok(t) => Ok((endpoint, t)),
            Err(e) => Err(protocol(&endpoint, what, &e.to_string())),
        }
    }
}

fn protocol(endpoint: &str, what: &str, why: &str) -> EtcdError {
    EtcdError::Protocol {
        endpoint: endpoint.into(),
        what: what.into(),
        why: why.into(),
    }
}

fn stream_error(endpoint: &str, what: &str, e: wire::StreamError) -> EtcdError {
    EtcdError::Http {
        endpoint: endpoint.into(),
        what: what.into(),
        status: u16::try_from(e.http_code).unwrap_or(0),
        message: wire::one_line(&e.message),
    }
}

fn put_request(key: &str, value: &[u8], lease: Option<i64>) -> wire::PutRequest {
    wire::PutRequest {
        key: wire::b64(key.as_bytes()),
        value: wire::b64(value),
        lease: lease.unwrap_or(0),
    }
}

fn to_kv(endpoint: &str, what: &str, kv: wire::KeyValue) -> Result<Kv, EtcdError> {
    let key = String::from_utf8(kv.key).map_err(|e| {
        let why = format!(
            "key {:?} is not UTF-8",
            e.as_bytes().escape_ascii().to_string()
        );
        protocol(endpoint, what, &why)
    })?;
    Ok(Kv {
        key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    })
}

fn to_kvs(endpoint: &str, what: &str, kvs: Vec<wire::KeyValue>) -> Result<Vec<Kv>, EtcdError> {
    kvs.into_iter()
        .map(|kv| to_kv(endpoint, what, kv))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_split_on_commas_and_drop_repeats() {
        let etcd = Etcd::new(&[
            "http://10.0.0.1:2379,http://10.0.0.2:2379/",
            "http://10.0.0.1:2379",
        ])
        .expect("urls");
        assert_eq!(etcd.endpoints(), ["10.0.0.1:2379", "10.0.0.2:2379"]);
        let etcd = Etcd::new(&[String::from("http://[fd00::1]:2379")]).expect("url");
        assert_eq!(etcd.endpoints(), ["[fd00::1]:2379"]);
    }

    #[test]
    fn empty_or_bad_lists_are_refused() {
        let none: [&str; 0] = [];
        assert!(matches!(Etcd::new(&none), Err(EtcdError::BadUrl(_))));
        let e = Etcd::new(&["http://10.0.0.1:2379,"]).expect_err("empty item");
        assert_eq!(e.to_string(), "bad etcd URL '': want http://HOST:PORT");
        let e = Etcd::new(&["http://10.0.0.1:2379,https://10.0.0.2:2379"]).expect_err("https");
        assert_eq!(
            e.to_string(),
            "etcd URL 'https://10.0.0.2:2379': TLS (https://) is not supported yet; use http://"
        );
    }

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_range("a/b"), (b"a/b".to_vec(), b"a/c".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), b"b");
        assert_eq!(prefix_end(&[0xff]), [0]);
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
    }
}

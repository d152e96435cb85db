//! The JSON shapes of etcd's v3 gateway (api/etcdserverpb/rpc.proto in proto3 JSON): bytes are base64, int64
//! values are strings, and fields at their zero value are left out of replies (so every reply field has a
//! default). Streaming calls (watch, lease keepalive) wrap each message as `{"result": ...}` or
//! `{"error": {...}}`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes as the gateway wants them.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// int64 goes out as a string, as proto3 JSON writes it: a JSON number could lose precision on the way.
fn int64_out<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// int64 comes back as a string; a number is taken too.
fn int64_in<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Text(String),
        Number(i64),
    }
    match Int64::deserialize(d)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) => s
            .parse()
            .map_err(|_| D::Error::custom(format!("not an int64: {s:.40}"))),
    }
}

fn bytes_in<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    STANDARD
        .decode(s.as_bytes())
        .map_err(|e| D::Error::custom(format!("bad base64: {e}")))
}

// ---- Requests ----

/// RangeRequest, in key order.
#[derive(Serialize)]
pub(crate) struct RangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    pub sort_order: &'static str,
    pub sort_target: &'static str,
}

impl RangeRequest {
    pub(crate) fn new(key: &[u8], range_end: Option<&[u8]>) -> RangeRequest {
        RangeRequest {
            key: b64(key),
            range_end: range_end.map(b64),
            sort_order: "ASCEND",
            sort_target: "KEY",
        }
    }
}

/// PutRequest; lease 0 means none.
#[derive(Serialize)]
pub(crate) struct PutRequest {
    pub key: String,
    pub value: String,
    #[serde(serialize_with = "int64_out", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

/// DeleteRangeRequest.
#[derive(Serialize)]
pub(crate) struct DeleteRangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
}

/// TxnRequest: if every compare holds, the success ops run; otherwise nothing does.
#[derive(Serialize)]
pub(crate) struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
}

/// Compare: the key's `target` field compared (`result`) with the value given for that target.
#[derive(Serialize)]
pub(crate) struct Compare {
    pub key: String,
    pub target: &'static str,
    pub result: &'static str,
    #[serde(serialize_with = "int64_out")]
    pub create_revision: i64,
}

/// RequestOp (only puts are needed).
#[derive(Serialize)]
pub(crate) struct RequestOp {
    pub request_put: PutRequest,
}

/// LeaseGrantRequest (etcd picks the ID).
#[derive(Serialize)]
pub(crate) struct LeaseGrantRequest {
    #[serde(rename = "TTL", serialize_with = "int64_out")]
    pub ttl: i64,
}

/// LeaseKeepAliveRequest and LeaseRevokeRequest: just the lease's ID.
#[derive(Serialize)]
pub(crate) struct LeaseId {
    #[serde(rename = "ID", serialize_with = "int64_out")]
    pub id: i64,
}

/// CompactionRequest.
#[derive(Serialize)]
pub(crate) struct CompactionRequest {
    #[serde(serialize_with = "int64_out")]
    pub revision: i64,
}

/// WatchRequest: the gateway reads the one message in the body and keeps the watch running after the body ends.
#[derive(Serialize)]
pub(crate) struct WatchRequest {
    pub create_request: WatchCreateRequest,
}

/// WatchCreateRequest.
#[derive(Serialize)]
pub(crate) struct WatchCreateRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(serialize_with = "int64_out")]
    pub start_revision: i64,
    /// Empty responses every 10 minutes (etcd's default) while nothing changes.
    pub progress_notify: bool,
}

// ---- Replies ----

/// ResponseHeader (only the revision is used).
#[derive(Deserialize, Default, Debug)]
pub(crate) struct Header {
    #[serde(default, deserialize_with = "int64_in")]
    pub revision: i64,
}

/// mvccpb.KeyValue.
#[derive(Deserialize, Debug)]
pub(crate) struct KeyValue {
    #[serde(default, deserialize_with = "bytes_in")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "bytes_in")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int64_in")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "int64_in")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "int64_in")]
    pub lease: i64,
}

/// RangeResponse.
#[derive(Deserialize, Debug)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

/// Any reply of which only the header matters: PutResponse, LeaseRevokeResponse, CompactionResponse.
#[derive(Deserialize, Debug)]
pub(crate) struct HeaderOnly {
    #[serde(default)]
    pub header: Header,
}

/// DeleteRangeResponse.
#[derive(Deserialize, Debug)]
pub(crate) struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "int64_in")]
    pub deleted: i64,
}

/// TxnResponse.
#[derive(Deserialize, Debug)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
}

/// LeaseGrantResponse and LeaseKeepAliveResponse (a keepalive for a lease that is gone has no TTL).
#[derive(Deserialize, Debug)]
pub(crate) struct LeaseResponse {
    #[serde(rename = "ID", default, deserialize_with = "int64_in")]
    pub id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64_in")]
    pub ttl: i64,
    /// LeaseGrantResponse has an error string of its own.
    #[serde(default)]
    pub error: String,
}

/// WatchResponse.
#[derive(Deserialize, Debug)]
pub(crate) struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "int64_in")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// mvccpb.Event.
#[derive(Deserialize, Debug)]
pub(crate) struct Event {
    /// "PUT" is the zero value, so left out; "DELETE" (or 1, should enums come as numbers).
    #[serde(rename = "type", default)]
    pub kind: serde_json::Value,
    pub kv: KeyValue,
}

impl Event {
    pub(crate) fn is_delete(&self) -> bool {
        self.kind == "DELETE" || self.kind == 1
    }
}

/// One message of a streaming reply.
#[derive(Deserialize, Debug)]
pub(crate) struct Frame<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

/// The gateway's error message inside a stream, e.g. when etcd shuts down under a watch:
/// `{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}`.
#[derive(Deserialize, Debug)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub http_code: i64,
    #[serde(default)]
    pub message: String,
}

/// A unary error reply: `{"error":"...","message":"...","code":N}` (code is the gRPC code).
#[derive(Deserialize)]
struct UnaryError {
    message: String,
    #[serde(default)]
    code: i64,
}

/// etcd's message in an error reply, or the reply itself made one short line.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<UnaryError>(body) {
        return format!("{} (gRPC code {})", e.message, e.code);
    }
    if let Ok(Frame::<serde::de::IgnoredAny> { error: Some(e), .. }) = serde_json::from_slice(body)
    {
        return e.message;
    }
    one_line(&String::from_utf8_lossy(body))
}

/// Text from the wire shown in an error: on one line, and not too long.
pub(crate) fn one_line(text: &str) -> String {
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if flat.is_empty() {
        "(empty reply)".into()
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_base64_and_int64_strings() {
        let put = PutRequest {
            key: b64(b"a/b"),
            value: b64(&[0, 255]),
            lease: 7_587_869_000_000_000_123,
        };
        assert_eq!(
            serde_json::to_string(&put).expect("json"),
            r#"{"key":"YS9i","value":"AP8=","lease":"7587869000000000123"}"#
        );
        let put = PutRequest {
            key: b64(b"k"),
            value: String::new(),
            lease: 0,
        };
        assert_eq!(
            serde_json::to_string(&put).expect("json"),
            r#"{"key":"aw==","value":""}"#
        );
        let range = RangeRequest::new(b"a/", Some(b"a0"));
        assert_eq!(
            serde_json::to_string(&range).expect("json"),
            r#"{"key":"YS8=","range_end":"YTA=","sort_order":"ASCEND","sort_target":"KEY"}"#
        );
    }

    #[test]
    fn replies_with_zero_fields_left_out_decode_to_zero() {
        // Captured from etcd 3.4.23: a put's reply, a range that found nothing, a failed transaction.
        let header = r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"}}"#;
        let r: RangeResponse = serde_json::from_str(header).expect("range");
        assert_eq!((r.header.revision, r.kvs.len()), (2, 0));
        let t: TxnResponse = serde_json::from_str(header).expect("txn");
        assert!(!t.succeeded);
        let d: DeleteRangeResponse = serde_json::from_str(header).expect("delete");
        assert_eq!(d.deleted, 0);
        // A keepalive for a lease that is gone: no TTL.
        let k: Frame<LeaseResponse> =
            serde_json::from_str(r#"{"result":{"header":{"revision":"9"},"ID":"99999"}}"#)
                .expect("keepalive");
        let k = k.result.expect("result");
        assert_eq!((k.id, k.ttl), (99999, 0));
    }

    #[test]
    fn a_range_reply_maps_keys_values_and_revisions() {
        let body = r#"{"header":{"revision":"10"},"kvs":[{"key":"Zm9vL2E=","create_revision":"2","mod_revision":"4","version":"2","value":"aGVsbG8="},{"key":"bGVhc2Vk","create_revision":"10","mod_revision":"10","version":"1","value":"eA==","lease":"12345"}],"count":"2"}"#;
        let r: RangeResponse = serde_json::from_str(body).expect("range");
        assert_eq!(r.header.revision, 10);
        assert_eq!(r.kvs[0].key, b"foo/a");
        assert_eq!(r.kvs[0].value, b"hello");
        assert_eq!((r.kvs[0].create_revision, r.kvs[0].mod_revision), (2, 4));
        assert_eq!((r.kvs[0].lease, r.kvs[1].lease), (0, 12345));
    }

    #[test]
    fn bad_numbers_and_base64_are_errors() {
        for body in [
            r#"{"header":{"revision":"ten"}}"#,
            r#"{"header":{"revision":true}}"#,
            r#"{"kvs":[{"key":"***"}]}"#,
        ] {
            assert!(
                serde_json::from_str::<RangeResponse>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn error_replies_give_etcds_message() {
        let unary = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(
            error_message(unary),
            "etcdserver: requested lease not found (gRPC code 5)"
        );
        let frame = br#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
        assert_eq!(error_message(frame), "transport is closing");
        assert_eq!(error_message(b"Not Found\n"), "Not Found");
        assert_eq!(error_message(b"a\nb"), "a b");
        assert_eq!(error_message(b""), "(empty reply)");
    }
}

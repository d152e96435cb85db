//! A watch: one long-lived `POST /v3/watch` whose chunked reply carries one JSON message per watch response,
//! `{"result": WatchResponse}`, or `{"error": {...}}` when etcd ends the stream (e.g. shutting down).

use std::fmt;
use std::io::{BufReader, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::http::{Body, Head};
use super::{protocol, stream_error, to_kv, wire, EtcdError, Kv};

const WHAT: &str = "/v3/watch";

/// A change to a key under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or changed: its new value.
    Put(Kv),
    /// The key was deleted (by a delete, or by its lease expiring) at `mod_revision`.
    Delete { key: String, mod_revision: i64 },
}

/// What [`Watch::next`] brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes, in revision order, and the header revision (the store's revision when they were sent).
    Changes { events: Vec<Change>, revision: i64 },
    /// The start revision was compacted away; etcd cancelled the watch. The caller must re-list
    /// ([`super::Etcd::get_prefix`]) and watch again from the listing's revision + 1.
    Compacted { compact_revision: i64 },
    /// A notification without events: the watch was created, or a progress report while nothing changed.
    /// Everything up to `revision` has been sent.
    Progress { revision: i64 },
}

/// The stream of watch responses, decoded as they arrive.
type Frames<R> = serde_json::StreamDeserializer<
    'static,
    serde_json::de::IoRead<R>,
    wire::Frame<wire::WatchResponse>,
>;

fn frames<R: Read>(body: R) -> Frames<R> {
    serde_json::Deserializer::from_reader(body).into_iter()
}

/// A running watch; see [`super::Etcd::watch`]. Dropping it ends the watch.
pub struct Watch {
    endpoint: String,
    frames: Frames<Body<BufReader<TcpStream>>>,
    stopper: WatchStopper,
    /// Why the watch is over, once it is: later calls to `next` say so.
    ended: Option<String>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Ends a [`Watch`] from another thread: a blocked [`Watch::next`] returns [`EtcdError::WatchStopped`].
#[derive(Debug, Clone)]
pub struct WatchStopper {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stopped: AtomicBool,
    /// A second handle on the watch's socket, to shut it down under a blocked read.
    socket: TcpStream,
}

impl WatchStopper {
    /// End the watch. Shutting the socket down wakes a read blocked on it.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let _ = self.shared.socket.shutdown(Shutdown::Both);
    }

    fn stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }
}

/// TCP keepalive on the watch's connection: a watch may be idle for long, and without a read timeout only
/// keepalive notices a peer that vanished without closing (a host that died, a cut network): after about a
/// minute. Best effort: without it the watch still works.
fn keepalive(socket: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::KeepAlive, &true);
    let _ = setsockopt(socket, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(socket, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(socket, sockopt::TcpKeepCount, &3);
}

impl Watch {
    /// The watch on a connection whose reply head (status 200) has been read.
    pub(super) fn new(
        endpoint: String,
        head: &Head,
        reader: BufReader<TcpStream>,
    ) -> Result<Watch, EtcdError> {
        let broken = |e: std::io::Error| EtcdError::Connection {
            endpoint: endpoint.clone(),
            what: WHAT.into(),
            why: e.to_string(),
        };
        let socket = reader.get_ref().try_clone().map_err(broken)?;
        // Block in next() as long as it takes: a quiet prefix sends nothing for minutes.
        socket.set_read_timeout(None).map_err(broken)?;
        keepalive(&socket);
        Ok(Watch {
            frames: frames(Body::new(reader, head)),
            stopper: WatchStopper {
                shared: Arc::new(Shared {
                    stopped: AtomicBool::new(false),
                    socket,
                }),
            },
            endpoint,
            ended: None,
        })
    }

    /// Block for the next watch response. Errors when the connection breaks (etcd down), when etcd ends the
    /// watch, or when it was stopped; the caller then re-lists and watches again. After an error or
    /// [`WatchEvent::Compacted`] the watch is over and every later call errors.
    // Not an Iterator: a watch never ends with None, only with an error the caller must act on.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<WatchEvent, EtcdError> {
        if self.stopper.stopped() {
            return Err(EtcdError::WatchStopped);
        }
        if let Some(why) = &self.ended {
            return Err(EtcdError::WatchEnded {
                endpoint: self.endpoint.clone(),
                why: why.clone(),
            });
        }
        let frame = self.frames.next();
        // A stop shows up as a broken or closed stream; say what really happened.
        if self.stopper.stopped() {
            return Err(EtcdError::WatchStopped);
        }
        let event = match frame {
            Some(Ok(frame)) => to_event(&self.endpoint, frame),
            Some(Err(e)) if e.is_io() || e.is_eof() => Err(EtcdError::Connection {
                endpoint: self.endpoint.clone(),
                what: WHAT.into(),
                why: format!("the stream broke: {e}"),
            }),
            Some(Err(e)) => Err(protocol(&self.endpoint, WHAT, &e.to_string())),
            None => Err(EtcdError::Connection {
                endpoint: self.endpoint.clone(),
                what: WHAT.into(),
                why: "etcd closed the stream".into(),
            }),
        };
        match &event {
            Ok(WatchEvent::Compacted { compact_revision }) => {
                self.ended = Some(format!(
                    "etcd cancelled it: its start revision was compacted (to {compact_revision})"
                ));
            }
            Err(e) => self.ended = Some(reason(e)),
            Ok(_) => {}
        }
        event
    }

    /// A handle another thread can use to end a blocked [`Watch::next`].
    pub fn stopper(&self) -> WatchStopper {
        self.stopper.clone()
    }
}

impl Drop for Watch {
    /// Shut the connection down even while a stopper still holds a handle on the socket, so etcd ends the
    /// watch now.
    fn drop(&mut self) {
        let _ = self.stopper.shared.socket.shutdown(Shutdown::Both);
    }
}

/// What ended the watch, for later calls (their error names the endpoint already).
fn reason(e: &EtcdError) -> String {
    match e {
        EtcdError::Connection { why, .. }
        | EtcdError::Protocol { why, .. }
        | EtcdError::WatchEnded { why, .. } => why.clone(),
        EtcdError::Http {
            status, message, ..
        } => format!("etcd ended it (HTTP {status}): {message}"),
        e => e.to_string(),
    }
}

/// One decoded message as a [`WatchEvent`], or the error that ended the watch.
fn to_event(
    endpoint: &str,
    frame: wire::Frame<wire::WatchResponse>,
) -> Result<WatchEvent, EtcdError> {
    let response = match frame {
        wire::Frame {
            result: Some(r), ..
        } => r,
        wire::Frame { error: Some(e), .. } => return Err(stream_error(endpoint, WHAT, e)),
        _ => return Err(protocol(endpoint, WHAT, "neither result nor error")),
    };
    if response.canceled {
        if response.compact_revision > 0 {
            return Ok(WatchEvent::Compacted {
                compact_revision: response.compact_revision,
            });
        }
        let why = if response.cancel_reason.is_empty() {
            "etcd cancelled it".to_string()
        } else {
            format!(
                "etcd cancelled it: {}",
                wire::one_line(&response.cancel_reason)
            )
        };
        return Err(EtcdError::WatchEnded {
            endpoint: endpoint.into(),
            why,
        });
    }
    let revision = response.header.revision;
    if response.events.is_empty() {
        return Ok(WatchEvent::Progress { revision });
    }
    let mut events = Vec::with_capacity(response.events.len());
    for event in response.events {
        events.push(if event.is_delete() {
            let kv = to_kv(endpoint, WHAT, event.kv)?;
            Change::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            }
        } else {
            Change::Put(to_kv(endpoint, WHAT, event.kv)?)
        });
    }
    Ok(WatchEvent::Changes { events, revision })
}

#[cfg(test)]
mod tests {
    use super::super::http::Chunked;
    use super::*;

    /// A chunked body carrying `messages` the way the gateway sends them (one chunk each, ending in a newline),
    /// then the last chunk.
    fn chunked(messages: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for m in messages {
            body.extend_from_slice(format!("{:x}\r\n{m}\n\r\n", m.len() + 1).as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    }

    fn decode(messages: &[&str]) -> Vec<Result<WatchEvent, EtcdError>> {
        let body = chunked(messages);
        // Three bytes at a time: messages split across reads.
        frames(Chunked::new(BufReader::with_capacity(3, &body[..])))
            .map(|frame| match frame {
                Ok(frame) => to_event("ep:1", frame),
                Err(e) => Err(protocol("ep:1", WHAT, &e.to_string())),
            })
            .collect()
    }

    fn kv(key: &str, value: &str, create: i64, modified: i64, lease: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modified,
            lease,
        }
    }

    #[test]
    fn watch_responses_map_to_progress_and_changes_in_order() {
        // As etcd 3.4.23's gateway sent them (captured; ids shortened): created, two puts and two deletes in one
        // response, one put in the next.
        let got: Vec<WatchEvent> = decode(&[
            r#"{"result":{"header":{"revision":"14"},"created":true}}"#,
            r#"{"result":{"header":{"revision":"14"},"events":[{"kv":{"key":"dy8x","create_revision":"12","mod_revision":"12","version":"1","value":"b25l"}},{"kv":{"key":"dy8y","create_revision":"13","mod_revision":"13","version":"1","value":"dHdv"}},{"type":"DELETE","kv":{"key":"dy8x","mod_revision":"14"}},{"type":"DELETE","kv":{"key":"dy8y","mod_revision":"14"}}]}}"#,
            r#"{"result":{"header":{"revision":"15"},"events":[{"kv":{"key":"dy8z","create_revision":"15","mod_revision":"15","version":"1","value":"dGhyZWU=","lease":"7"}}]}}"#,
        ])
            .into_iter()
            .map(|e| e.expect("event"))
            .collect();
        assert_eq!(
            got,
            vec![
                WatchEvent::Progress { revision: 14 },
                WatchEvent::Changes {
                    events: vec![
                        Change::Put(kv("w/1", "one", 12, 12, 0)),
                        Change::Put(kv("w/2", "two", 13, 13, 0)),
                        Change::Delete {
                            key: "w/1".into(),
                            mod_revision: 14
                        },
                        Change::Delete {
                            key: "w/2".into(),
                            mod_revision: 14
                        },
                    ],
                    revision: 14
                },
                WatchEvent::Changes {
                    events: vec![Change::Put(kv("w/3", "three", 15, 15, 7))],
                    revision: 15
                },
            ]
        );
    }

    #[test]
    fn a_compacted_start_revision_and_an_error_frame_end_the_watch() {
        // Captured: the reply to a watch from a compacted revision, then what etcd sent when shut down under a
        // watch.
        let got = decode(&[
            r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#,
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#,
        ]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            *got[0].as_ref().expect("compacted"),
            WatchEvent::Compacted {
                compact_revision: 5
            }
        );
        let e = got[1].as_ref().expect_err("error frame");
        assert!(
            matches!(e, EtcdError::Http { status: 503, message, .. } if message == "transport is closing"),
            "{e}"
        );
        // Cancelled for another reason: an error that says so.
        let e = decode(&[
            r#"{"result":{"header":{},"canceled":true,"cancel_reason":"permission denied"}}"#,
        ])
        .remove(0)
        .expect_err("cancelled");
        assert_eq!(
            e.to_string(),
            "etcd at ep:1: the watch ended: etcd cancelled it: permission denied"
        );
    }
}

//! DNS messages in and out, through hickory-proto (no hand-written wire format).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::names::{Answer, Kind};

/// Local answers are not to be cached: a name is gone as soon as `rm` returns (aardvark-dns does the same;
/// Docker's 600 s would keep a removed sandbox's address in any cache for ten minutes).
const TTL: u32 = 0;
/// The largest UDP answer sent, whatever the asker offers (the DNS flag day 2020 figure, which keeps answers
/// unfragmented).
pub const MAX_UDP: usize = 1232;

/// One question, read from a query.
#[derive(Debug)]
pub struct Question {
    pub message: Message,
    pub name: String,
    pub kind: Kind,
}

/// What to do with the bytes a sandbox sent.
#[derive(Debug)]
pub enum Parsed {
    Question(Question),
    /// Send this back at once (an error answer).
    Reply(Vec<u8>),
    /// Not worth an answer (too short to hold even a header, or itself an answer).
    Drop,
}

/// Read a query.
pub fn parse(bytes: &[u8]) -> Parsed {
    let message = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            return match bytes {
                [a, b, _, _, _, _, _, _, _, _, _, _, ..] => error(
                    u16::from_be_bytes([*a, *b]),
                    OpCode::Query,
                    ResponseCode::FormErr,
                ),
                _ => Parsed::Drop,
            }
        }
    };
    if message.message_type() != MessageType::Query {
        return Parsed::Drop;
    }
    if message.op_code() != OpCode::Query {
        return error(message.id(), message.op_code(), ResponseCode::NotImp);
    }
    let [query] = message.queries() else {
        return error(message.id(), OpCode::Query, ResponseCode::FormErr);
    };
    let kind = match query.query_type() {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        RecordType::PTR => Kind::Ptr,
        _ => Kind::Other,
    };
    let name = query.name().to_ascii();
    Parsed::Question(Question {
        message,
        name,
        kind,
    })
}

fn error(id: u16, op: OpCode, code: ResponseCode) -> Parsed {
    match Message::error_msg(id, op, code).to_vec() {
        Ok(bytes) => Parsed::Reply(bytes),
        Err(_) => Parsed::Drop,
    }
}

/// The answer to `q` from the table (`answer` is not [`Answer::Forward`]), at most `limit` bytes: a longer one
/// goes out truncated (TC set, no records), so the asker retries over TCP.
pub fn respond(q: &Question, answer: &Answer, limit: usize) -> Option<Vec<u8>> {
    let mut out = Message::new();
    out.set_id(q.message.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.message.recursion_desired())
        .set_recursion_available(true)
        .add_queries(q.message.queries().iter().cloned());
    if q.message.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(u16::try_from(MAX_UDP).unwrap_or(512));
        out.set_edns(edns);
    }
    let qname = q.message.queries().first()?.name().clone();
    match answer {
        Answer::Addresses(addrs) => {
            out.set_authoritative(true);
            for a in addrs {
                let data = match a {
                    std::net::IpAddr::V4(ip) => RData::A(A(*ip)),
                    std::net::IpAddr::V6(ip) => RData::AAAA(AAAA(*ip)),
                };
                out.add_answer(Record::from_rdata(qname.clone(), TTL, data));
            }
        }
        Answer::NoData => {
            out.set_authoritative(true);
        }
        Answer::Pointer(name) => {
            out.set_authoritative(true);
            let target = Name::from_ascii(format!("{name}.")).ok()?;
            out.add_answer(Record::from_rdata(qname, TTL, RData::PTR(PTR(target))));
        }
        Answer::NxDomain => {
            out.set_response_code(ResponseCode::NXDomain);
        }
        Answer::Refused => {
            out.set_response_code(ResponseCode::Refused);
        }
        // Forwarding has nothing to say here; upstream failed: SERVFAIL.
        Answer::Forward(_) => {
            out.set_response_code(ResponseCode::ServFail);
        }
    }
    let bytes = out.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    out.truncate().to_vec().ok()
}

/// The UDP size limit for answers to `q`: what it offers (EDNS), at least 512, at most [`MAX_UDP`].
pub fn udp_limit(q: &Question) -> usize {
    usize::from(q.message.max_payload()).clamp(512, MAX_UDP)
}

/// SERVFAIL for a forwarded query that found no upstream answer, from the query's own bytes.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    match parse(query) {
        Parsed::Question(q) => respond(&q, &Answer::Forward(vec![]), MAX_UDP),
        _ => None,
    }
}

/// An address's reverse name.
#[cfg(test)]
fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(ip) => {
            let n = u128::from(ip);
            let mut name: String = (0..32)
                .map(|i| format!("{:x}.", (n >> (4 * i)) & 0xf))
                .collect();
            name.push_str("ip6.arpa");
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::net::{IpAddr, Ipv6Addr};

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn question(bytes: &[u8]) -> Question {
        match parse(bytes) {
            Parsed::Question(q) => q,
            other => panic!("not a question: {other:?}"),
        }
    }

    #[test]
    fn a_local_name_gets_its_addresses_with_ttl_zero_and_the_same_id() {
        let q = question(&query("web.", RecordType::A, None));
        assert_eq!(q.name, "web.");
        assert_eq!(q.kind, Kind::A);
        let addrs = vec![IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 3])];
        let out = respond(&q, &Answer::Addresses(addrs.clone()), 512).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.id(), 0x1234);
        assert!(m.authoritative() && m.recursion_available() && !m.truncated());
        let got: Vec<IpAddr> = m
            .answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => IpAddr::V4(a.0),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, addrs);
        assert!(m.answers().iter().all(|r| r.ttl() == 0));
    }

    #[test]
    fn an_answer_too_long_for_udp_is_truncated_so_the_asker_uses_tcp() {
        let q = question(&query("many.", RecordType::A, None));
        let addrs: Vec<IpAddr> = (1..=60).map(|i| IpAddr::from([10, 0, 1, i])).collect();
        let small = respond(&q, &Answer::Addresses(addrs.clone()), udp_limit(&q)).unwrap();
        let m = Message::from_vec(&small).unwrap();
        assert!(m.truncated() && m.answers().is_empty());
        assert!(small.len() <= 512);
        let full = respond(&q, &Answer::Addresses(addrs), 65535).unwrap();
        assert_eq!(Message::from_vec(&full).unwrap().answers().len(), 60);
        // An asker offering more gets more, up to the cap.
        let big = question(&query("many.", RecordType::A, Some(4096)));
        assert_eq!(udp_limit(&big), MAX_UDP);
    }

    #[test]
    fn errors_and_pointers_are_well_formed() {
        let q = question(&query("2.0.0.10.in-addr.arpa.", RecordType::PTR, None));
        assert_eq!(q.kind, Kind::Ptr);
        let out = respond(&q, &Answer::Pointer("app".into()), 512).unwrap();
        let m = Message::from_vec(&out).unwrap();
        match m.answers()[0].data() {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "app."),
            other => panic!("{other:?}"),
        }
        let nx = Message::from_vec(&respond(&q, &Answer::NxDomain, 512).unwrap()).unwrap();
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        let sf = Message::from_vec(&servfail(&query("x.", RecordType::A, None)).unwrap()).unwrap();
        assert_eq!(sf.response_code(), ResponseCode::ServFail);
        assert_eq!(sf.id(), 0x1234);
        // Garbage with a header's worth of bytes: FORMERR with its id; less: nothing.
        match parse(&[0xab, 0xcd, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1]) {
            Parsed::Reply(b) => {
                let m = Message::from_vec(&b).unwrap();
                assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&[1, 2, 3]), Parsed::Drop));
        assert_eq!(
            reverse_name(IpAddr::from([10, 0, 0, 2])),
            "2.0.0.10.in-addr.arpa"
        );
    }

    #[test]
    fn an_aaaa_question_gets_aaaa_records_and_an_empty_answer_is_authoritative() {
        let q = question(&query("web.", RecordType::AAAA, None));
        assert_eq!(q.kind, Kind::Aaaa);
        let addrs: Vec<IpAddr> = vec!["fd00:1::2".parse().unwrap(), "2001:db8::3".parse().unwrap()];
        let out = respond(&q, &Answer::Addresses(addrs.clone()), 512).unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::NoError));
        let got: Vec<IpAddr> = m
            .answers()
            .iter()
            .map(|r| match r.data() {
                RData::AAAA(a) => IpAddr::V6(a.0),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, addrs);
        assert!(m
            .answers()
            .iter()
            .all(|r| r.ttl() == 0 && r.record_type() == RecordType::AAAA));
        // A name with no IPv6 address: NOERROR, no records, authoritative (NODATA, not NXDOMAIN).
        let none = Message::from_vec(&respond(&q, &Answer::NoData, 512).unwrap()).unwrap();
        assert_eq!(none.response_code(), ResponseCode::NoError);
        assert!(none.answers().is_empty() && none.authoritative());
        // 60 IPv6 addresses do not fit in 512 bytes: truncated, so the asker comes back over TCP.
        let many: Vec<IpAddr> = (1..=60u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i)))
            .collect();
        let small =
            Message::from_vec(&respond(&q, &Answer::Addresses(many), 512).unwrap()).unwrap();
        assert!(small.truncated() && small.answers().is_empty());
    }

    #[test]
    fn ip6_arpa_questions_read_as_pointers_whatever_their_labels() {
        let ip: IpAddr = "fd00:1::2".parse().unwrap();
        let name = reverse_name(ip);
        assert_eq!(
            name,
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa"
        );
        let q = question(&query(&format!("{name}."), RecordType::PTR, None));
        assert_eq!(
            (q.kind, q.name.as_str()),
            (Kind::Ptr, format!("{name}.").as_str())
        );
        // Hostile labels reach the table as text it can refuse: a dot inside a label comes escaped, bytes
        // outside ASCII likewise, so no label can pass for two nibbles.
        let mut m = Message::new();
        let odd = Name::from_labels(vec![
            b"1.2".to_vec(),
            vec![0xff],
            b"ip6".to_vec(),
            b"arpa".to_vec(),
        ])
        .unwrap();
        m.set_id(7).add_query(Query::query(odd, RecordType::PTR));
        let q = question(&m.to_vec().unwrap());
        assert_eq!(q.kind, Kind::Ptr);
        assert!(q.name.starts_with("1\\.2."), "{}", q.name);
    }
}

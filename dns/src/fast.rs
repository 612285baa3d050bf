//! The UDP fast path: the query nearly every client sends (one A or AAAA question, class IN,
//! for a name in our domains; no EDNS, or EDNS without options) answered from the packet's
//! bytes into a reply buffer, without decoding a message or building records.
//!
//! Everything else (other types, the apex, names to forward, EDNS options, anything odd)
//! returns `None` and takes hickory's full path, so this only has to be right where it
//! answers, not complete; `tests` holds it to the full path's answers on generated queries.
//! Pure: no sockets, so it is tested and fuzzed on bytes.

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name};

use crate::zone::Found;
use crate::{ProxyAddrs, Zone};

/// A UDP answer without EDNS is at most 512 bytes (RFC 1035 4.2.1), as on the full path.
pub(crate) const MAX_ANSWER: usize = 512;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// One question read from a query packet.
struct Question<'p> {
    id: u16,
    recursion_desired: bool,
    checking_disabled: bool,
    /// The question as sent (name, type, class): echoed in the answer.
    wire: &'p [u8],
    name: LowerName,
    qtype: u16,
    /// The asker's EDNS payload size, when it sent an OPT: the answer carries one too.
    edns: Option<u16>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads `packet` if it is a query this path answers: a standard query (not truncated) with
/// exactly one question of class IN for A or AAAA, no answer or authority records, and at most
/// one additional record that is an EDNS version 0 OPT without options, ending the packet.
fn question(packet: &[u8]) -> Option<Question<'_>> {
    if packet.len() < 12 {
        return None;
    }
    let (flags, flags2) = (packet[2], packet[3]);
    // QR (a response), an opcode other than QUERY, or TC: the full path decides.
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 || flags & 0x02 != 0 {
        return None;
    }
    let counts = [
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    ];
    if counts[0] != 1 || counts[1] != 0 || counts[2] != 0 || counts[3] > 1 {
        return None;
    }
    let mut at = 12;
    let mut labels: [&[u8]; 128] = [&[]; 128];
    let mut count = 0;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // A compression pointer or a reserved label type: not in a plain question.
        if len > 63 || count == labels.len() {
            return None;
        }
        labels[count] = packet.get(at + 1..at + 1 + len)?;
        count += 1;
        at += 1 + len;
        // The name on the wire, its final zero included, is at most 255 bytes.
        if at - 12 + 1 > 255 {
            return None;
        }
    }
    let qtype = u16_at(packet, at)?;
    let qclass = u16_at(packet, at + 2)?;
    let end = at + 4;
    if qclass != CLASS_IN || (qtype != TYPE_A && qtype != TYPE_AAAA) {
        return None;
    }
    let edns = match counts[3] {
        0 if end == packet.len() => None,
        // The OPT: root owner, its type, payload size (2), extended rcode, version, flags (2),
        // and no options. A later version gets BADVERS on the full path.
        1 if packet.len() == end + 11
            && packet[end] == 0
            && u16_at(packet, end + 1)? == TYPE_OPT
            && packet[end + 6] == 0
            && u16_at(packet, end + 9)? == 0 =>
        {
            Some(u16_at(packet, end + 3)?)
        }
        _ => return None,
    };
    let name = Name::from_labels(labels[..count].iter().copied()).ok()?;
    Some(Question {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        recursion_desired: flags & 0x01 != 0,
        checking_disabled: flags2 & 0x10 != 0,
        wire: &packet[12..end],
        name: LowerName::new(&name),
        qtype,
        edns,
    })
}

/// A bounded writer into the answer buffer: a write past its end fails the answer (the full
/// path then answers instead).
struct Writer<'b> {
    buf: &'b mut [u8; MAX_ANSWER],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len.checked_add(bytes.len())?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    fn u16(&mut self, v: u16) -> Option<()> {
        self.put(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_be_bytes())
    }

    /// `prefix` (one label, may be empty for none) then `name`'s labels, uncompressed.
    fn name(&mut self, prefix: &[u8], name: &Name) -> Option<()> {
        if !prefix.is_empty() {
            self.put(&[prefix.len() as u8])?;
            self.put(prefix)?;
        }
        for label in name.iter() {
            self.put(&[label.len() as u8])?;
            self.put(label)?;
        }
        self.put(&[0])
    }

    /// An address record owned by the question's name (a pointer to offset 12).
    fn address(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) -> Option<()> {
        self.put(&[0xc0, 12])?;
        self.u16(rtype)?;
        self.u16(CLASS_IN)?;
        self.u32(ttl)?;
        self.u16(rdata.len() as u16)?;
        self.put(rdata)
    }

    /// The SOA of `apex`, as `Zone::answer` gives it.
    fn soa(&mut self, apex: &LowerName, zone: &Zone) -> Option<()> {
        let apex = Name::from(apex);
        self.name(b"", &apex)?;
        self.u16(TYPE_SOA)?;
        self.u16(CLASS_IN)?;
        self.u32(zone.ttl())?;
        let rdlen_at = self.len;
        self.u16(0)?;
        self.name(b"ns", &apex)?;
        self.name(b"hostmaster", &apex)?;
        for v in [zone.serial(), 3600, 600, 86400, zone.ttl()] {
            self.u32(v)?;
        }
        let rdlen = (self.len - rdlen_at - 2) as u16;
        self.buf[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        Some(())
    }
}

/// Writes the answer to `packet` into `out` and returns its length, when `packet` is a query
/// this path answers (see [`question`]) for a name the zone has; `None` sends it to the full
/// path. `recursion_available` is the RA flag the asker gets.
pub(crate) fn answer(
    packet: &[u8],
    zone: &Zone,
    view: &ProxyAddrs,
    recursion_available: bool,
    out: &mut [u8; MAX_ANSWER],
) -> Option<usize> {
    let q = question(packet)?;
    let mut v4 = [[0u8; 4]; 8];
    let mut v6 = [[0u8; 16]; 8];
    let (mut n4, mut n6) = (0, 0);
    let (apex, code) = match zone.find(&q.name) {
        Found::NotOurs | Found::Apex(_) => return None,
        Found::Proxy(apex) => {
            if let Some(a) = view.v4 {
                v4[0] = a.octets();
                n4 = 1;
            }
            if let Some(a) = view.v6 {
                v6[0] = a.octets();
                n6 = 1;
            }
            (apex, ResponseCode::NoError)
        }
        Found::Direct(apex, addrs) => {
            for addr in addrs {
                match addr {
                    std::net::IpAddr::V4(a) if n4 < v4.len() => {
                        v4[n4] = a.octets();
                        n4 += 1;
                    }
                    std::net::IpAddr::V6(a) if n6 < v6.len() => {
                        v6[n6] = a.octets();
                        n6 += 1;
                    }
                    // More than fit here: the full path answers.
                    _ => return None,
                }
            }
            (apex, ResponseCode::NoError)
        }
        Found::Missing(apex) => (apex, ResponseCode::NXDomain),
    };
    let answers: &[&[u8]] = &[];
    let mut refs: [&[u8]; 8] = [&[]; 8];
    let (rtype, answers) = if code == ResponseCode::NXDomain {
        (q.qtype, answers)
    } else if q.qtype == TYPE_A {
        for (r, a) in refs.iter_mut().zip(&v4[..n4]) {
            *r = a;
        }
        (TYPE_A, &refs[..n4])
    } else {
        for (r, a) in refs.iter_mut().zip(&v6[..n6]) {
            *r = a;
        }
        (TYPE_AAAA, &refs[..n6])
    };
    let mut w = Writer { buf: out, len: 0 };
    w.u16(q.id)?;
    // QR, opcode QUERY, AA, RD as asked; RA, CD as asked, the code.
    w.put(&[
        0x80 | 0x04 | u8::from(q.recursion_desired),
        (u8::from(recursion_available) << 7)
            | (u8::from(q.checking_disabled) << 4)
            | (u16::from(code) & 0x0f) as u8,
    ])?;
    let authority = u16::from(answers.is_empty());
    let additional = u16::from(q.edns.is_some());
    for count in [1, answers.len() as u16, authority, additional] {
        w.u16(count)?;
    }
    w.put(q.wire)?;
    for rdata in answers {
        w.address(rtype, zone.ttl(), rdata)?;
    }
    if answers.is_empty() {
        w.soa(apex, zone)?;
    }
    if let Some(payload) = q.edns {
        // As the full path answers (`server::answer_edns`): version 0, the asker's payload
        // size (at least 512), no flags, no options.
        w.put(&[0])?;
        w.u16(TYPE_OPT)?;
        w.u16(payload.max(512))?;
        w.u32(0)?;
        w.u16(0)?;
    }
    Some(w.len)
}

#[cfg(test)]
mod tests;

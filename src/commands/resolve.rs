//! `itproxy resolve NAME`: ask the daemon's DNS server, as any client would, and show the answer.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use http::Method;
use itproxy_dns::proto::op::{Message, MessageType, OpCode, Query};
use itproxy_dns::proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use itproxy_daemon::api;

const TIMEOUT: Duration = Duration::from_secs(3);

async fn over_udp(server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()?;
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.send_to(query, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
        .await
        .with_context(|| format!("no DNS answer from {server} within {}s", TIMEOUT.as_secs()))??;
    buf.truncate(n);
    Ok(buf)
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> anyhow::Result<Vec<u8>> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(&(query.len() as u16).to_be_bytes()).await?;
        s.write_all(query).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    Ok(tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("DNS over TCP timed out")??)
}

/// Queries the daemon's DNS listener (a loopback one first) for `name`/`record_type` and prints the answer.
pub async fn run(
    state_dir: &Path,
    name: &str,
    record_type: &str,
    json: bool,
) -> anyhow::Result<()> {
    let status: api::Status = Client::new(state_dir)
        .call(Method::GET, "/v1/status", None)
        .await?;
    let Some(server) = super::local_listener(&status.listeners.dns) else {
        bail!("the itproxy daemon serves no DNS (it was started with --no-dns)");
    };
    let rtype = RecordType::from_str(&record_type.to_ascii_uppercase()).map_err(|_| {
        anyhow::anyhow!("unknown record type {record_type:?}; try A, AAAA, SOA, NS, MX, TXT")
    })?;
    let mut qname =
        Name::from_ascii(name).map_err(|e| anyhow::anyhow!("invalid DNS name {name:?}: {e}"))?;
    qname.set_fqdn(true);

    let mut msg = Message::new(std::process::id() as u16, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(qname, rtype));
    let query = msg.to_vec()?;
    let mut bytes = over_udp(server, &query).await?;
    let mut protocol = "udp";
    if Message::from_vec(&bytes).is_ok_and(|m| m.metadata.truncation) {
        bytes = over_tcp(server, &query).await?;
        protocol = "tcp";
    }
    let answer = Message::from_vec(&bytes).context("the DNS answer could not be parsed")?;
    let code = answer.metadata.response_code;
    let records: Vec<String> = answer.answers.iter().map(|r| r.to_string()).collect();
    if json {
        let v = serde_json::json!({
            "server": server.to_string(),
            "protocol": protocol,
            "status": code.to_string(),
            "authoritative": answer.metadata.authoritative,
            "answers": answer.answers.iter().map(|r| serde_json::json!({
                "name": r.name.to_string(),
                "ttl": r.ttl,
                "type": r.record_type().to_string(),
                "data": r.data.to_string(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for r in &records {
        println!("{r}");
    }
    let aa = if answer.metadata.authoritative {
        ", authoritative"
    } else {
        ""
    };
    let empty = if records.is_empty() && code.to_string() == "No Error" {
        " (no records of that type)"
    } else {
        ""
    };
    println!(";; {code}{empty} from {server} over {protocol}{aa}");
    Ok(())
}

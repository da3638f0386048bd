//! TLS for the replication connection: the SSLRequest exchange, then an OpenSSL handshake configured by
//! [`ConnInfo::ssl_connector`], the same builder the SQL connection uses (trusted roots, client certificate,
//! verification per `sslmode`; see [`crate::pg::conninfo`] for the rules).
//!
//! Invariant: a handshake never verifies less than `sslmode` asks for, and for `verify-full` the certificate must
//! name the host being connected to.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::SslRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::error::ReplicationError;
use crate::pg::conninfo::{ConnInfo, SslMode};

/// The connection's byte stream, plain or TLS.
#[derive(Debug)]
pub(crate) enum Socket {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connected socket and, for TLS, the `tls-server-end-point` channel-binding data (hash of the server's
/// certificate, RFC 5929).
pub(crate) struct Negotiated {
    pub socket: Socket,
    pub end_point: Option<Vec<u8>>,
}

/// Sends SSLRequest when the mode asks for TLS and completes the handshake.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    config: &ConnInfo,
    host: &str,
) -> Result<Negotiated, ReplicationError> {
    if config.ssl_mode == SslMode::Disable {
        return Ok(Negotiated { socket: Socket::Plain(tcp), end_point: None });
    }
    let mut req = bytes::BytesMut::with_capacity(8);
    postgres_protocol::message::frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if config.ssl_mode == SslMode::Prefer => {
            return Ok(Negotiated { socket: Socket::Plain(tcp), end_point: None });
        }
        b'N' => return Err(ReplicationError::TlsNotSupported { mode: config.ssl_mode }),
        other => {
            return Err(ReplicationError::protocol(format!(
                "unexpected answer {:?} to SSLRequest (the server may be older than PostgreSQL 7.0, or not PostgreSQL)",
                char::from(other)
            )));
        }
    }

    let ssl = ssl_for(config, host)?;
    let mut stream = SslStream::new(ssl, tcp)
        .map_err(|source| ReplicationError::TlsSetup { message: "could not create the TLS session".into(), source })?;
    if let Err(source) = Pin::new(&mut stream).connect().await {
        let verify = stream.ssl().verify_result();
        let (verify, advice) = if verify == openssl::x509::X509VerifyResult::OK {
            (source.to_string(), "check the server's TLS configuration")
        } else {
            (
                format!("certificate verification failed: {}", verify.error_string()),
                "sslrootcert must hold the CA certificate (PEM) that signed the server's certificate, and for \
                 verify-full the certificate must name the host of the URL",
            )
        };
        return Err(ReplicationError::TlsHandshake {
            host: host.to_owned(),
            mode: config.ssl_mode,
            verify,
            advice,
            source,
        });
    }
    let end_point = tls_server_end_point(stream.ssl());
    Ok(Negotiated { socket: Socket::Tls(Box::new(stream)), end_point })
}

fn ssl_for(config: &ConnInfo, host: &str) -> Result<openssl::ssl::Ssl, ReplicationError> {
    let setup = |message: &str| {
        let message = message.to_owned();
        move |source: openssl::error::ErrorStack| ReplicationError::TlsSetup { message, source }
    };
    let connector = config.ssl_connector()?;
    let mut conf = connector.configure().map_err(setup("could not configure the TLS session"))?;
    conf.set_verify_hostname(config.verifies_host());
    if !config.verifies_chain() {
        conf.set_verify(openssl::ssl::SslVerifyMode::NONE);
    }
    conf.into_ssl(host).map_err(setup("could not configure the TLS session for the host"))
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with its signature's digest, SHA-256 for MD5 and
/// SHA-1.
fn tls_server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let algorithms = cert.signature_algorithm().object().nid().signature_algorithms()?;
    let digest = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    cert.digest(digest).ok().map(|d| d.to_vec())
}

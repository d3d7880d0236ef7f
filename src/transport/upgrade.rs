//! Where upgraded connections leave actix-http: its HTTP/1 dispatcher hands every request with
//! `Connection: upgrade` here, together with the raw TCP stream and any bytes it read past the
//! request head. The request is routed by path to one of the registered [`Endpoint`]s, which
//! checks the handshake; the `101` (or the refusal) is written here, and the socket then runs
//! on [`super::ws_io`].
//!
//! Why not an actix-web route: the dispatcher behind a route keeps a read and a write buffer of
//! 8 KiB each for as long as the connection lives, which was 16 KiB of an idle socket's 19 KB.

use std::io;
use std::sync::Arc;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::header::{self, HeaderMap, HeaderValue};
use actix_http::{ConnectionType, Method, Request, Response, h1};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::future::LocalBoxFuture;

use super::edge::Conn;
use super::origin::OriginPolicy;
use super::ws_io::{WsReader, WsWriter};
use crate::error::{Code, Error};

/// A WebSocket endpoint: checks one handshake and says how its socket starts.
///
/// `Arc<Self>` so the accepted socket can keep the endpoint's shared state without a copy.
pub trait Endpoint: Send + Sync + 'static {
    /// Answers a `GET` upgrade request on this endpoint's path: accepted, or the refusal to send.
    fn accept<'a>(self: Arc<Self>, req: &'a Request) -> LocalBoxFuture<'a, Result<Accepted, Error>>;
}

/// An accepted WebSocket handshake: the `101` response and what runs the socket afterwards.
pub struct Accepted {
    /// The `101 Switching Protocols` response to send.
    pub response: Response<()>,
    /// The largest message the socket reads.
    pub max_bytes: usize,
    /// Starts the socket on its reader and writer once the response is out.
    pub start: Box<dyn FnOnce(WsReader, WsWriter)>,
}

/// The upgrade service: the registered WebSocket endpoints, by path.
#[derive(Clone, Default)]
pub struct Upgrades {
    /// Cloned for every upgrade request, so shared rather than copied.
    endpoints: Arc<Vec<(&'static str, Arc<dyn Endpoint>)>>,
}

impl Upgrades {
    /// No endpoints yet: every upgrade is answered 404.
    pub fn new() -> Self {
        Upgrades::default()
    }

    /// Registers `endpoint` at `path`; an earlier registration of the same path wins.
    pub fn endpoint(mut self, path: &'static str, endpoint: Arc<dyn Endpoint>) -> Self {
        Arc::make_mut(&mut self.endpoints).push((path, endpoint));
        self
    }

    /// The registered paths, for the plain-HTTP answer to a request that is not an upgrade.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.endpoints.iter().map(|(path, _)| *path)
    }

    /// Answers one upgrade request and, when accepted, starts the socket on the raw stream.
    ///
    /// The error type is what actix-http's upgrade hook asks for; the only errors are the
    /// stream's own, while the handshake's answer is written.
    pub async fn handle(self, req: Request, framed: Framed<Conn, h1::Codec>) -> Result<(), actix_http::Error> {
        // A handshake's only failures are the client's connection going away mid-answer: not
        // the server's fault, so not an error for actix to log.
        if let Err(e) = self.answer(req, framed).await {
            tracing::debug!(error = %e, "upgrade answer not written");
        }
        Ok(())
    }

    async fn answer(self, req: Request, mut framed: Framed<Conn, h1::Codec>) -> io::Result<()> {
        let get = req.method() == Method::GET;
        let endpoint = self.endpoints.iter().find(|(path, _)| get && *path == req.path());
        let accepted = match endpoint {
            Some((_, endpoint)) => Arc::clone(endpoint).accept(&req).await,
            None => Err(Error::new(Code::NotFound, format!("no route for {} {}", req.method(), req.path()))),
        };
        match accepted {
            Ok(accepted) => {
                framed.send(h1::Message::Item((accepted.response, BodySize::None))).await?;
                let parts = framed.into_parts();
                let (stream, unread_head, slot) = parts.io.into_parts();
                // What actix-http had not yet taken of the edge's head comes before its buffer.
                let mut already_read = unread_head;
                already_read.extend_from_slice(&parts.read_buf);
                let io = Arc::new(stream);
                let reader = WsReader::new(Arc::clone(&io), already_read, accepted.max_bytes);
                (accepted.start)(reader, WsWriter::new(io).holding(slot));
                Ok(())
            }
            Err(refusal) => refuse(&mut framed, refusal).await,
        }
    }
}

/// Checks `req` as a WebSocket handshake and its Origin against `origins`, refusing a bad one
/// the same way on every endpoint.
pub fn verify_handshake(req: &Request, origins: &OriginPolicy) -> Result<(), Error> {
    actix_http::ws::verify_handshake(req.head()).map_err(|e| Error::new(Code::BadHandshake, e.to_string()))?;
    check_origin(&req.head().headers, origins)
}

/// Refuses a request from a page whose `Origin` `origins` does not allow, the same way for
/// upgrades and long-poll requests.
pub fn check_origin(headers: &HeaderMap, origins: &OriginPolicy) -> Result<(), Error> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !origins.allows(header(header::ORIGIN), header(header::HOST)) {
        return Err(Error::new(Code::OriginNotAllowed, "this page's origin may not open a socket here"));
    }
    Ok(())
}

/// The `101 Switching Protocols` answering `req`'s (verified) handshake.
pub fn switching_protocols(req: &Request) -> Response<()> {
    actix_http::ws::handshake_response(req.head()).finish().drop_body()
}

/// Sends the refusal as a JSON error response, then the connection closes.
async fn refuse(framed: &mut Framed<Conn, h1::Codec>, refusal: Error) -> io::Result<()> {
    let body = Bytes::from(refusal.body().to_string());
    let mut response = Response::with_body(refusal.code.status(), ());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = refusal.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response.head_mut().set_connection_type(ConnectionType::Close);
    framed.feed(h1::Message::Item((response, BodySize::Sized(body.len() as u64)))).await?;
    framed.feed(h1::Message::Chunk(Some(body))).await?;
    framed.send(h1::Message::Chunk(None)).await
}

/// A registered endpoint's path asked for without `Connection: upgrade`: upgrade requests never
/// reach the HTTP routes, so this answers only handshakes that are not one.
pub async fn not_upgraded(req: HttpRequest) -> HttpResponse {
    let reason = match actix_http::ws::verify_handshake(req.head()) {
        Err(e) => e.to_string(),
        Ok(()) => "the request is not a WebSocket upgrade".to_owned(),
    };
    Error::new(Code::BadHandshake, reason).error_response()
}

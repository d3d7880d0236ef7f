//! WebSocket I/O on a raw upgraded `TcpStream`: [`WsReader`] turns client frames into whole
//! messages, [`WsWriter`] sends server frames. Both share the stream through an `Arc` and use
//! readiness-style I/O, so neither needs `&mut` access to it.
//!
//! Why this exists: behind actix-web, an upgraded socket keeps the h1 dispatcher's two 8 KiB
//! buffers for its whole life. Here a buffer exists only while a frame is partly read or partly
//! written; an idle connection holds no allocation at all.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_ws::AggregatedMessage;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::net::TcpStream;

/// How much room is made in the read buffer before each read.
const READ_CHUNK: usize = 4 * 1024;

/// How long a closed socket keeps reading what its client still sends, before it is dropped.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a lingering writer checks whether the reader has let go of the stream.
const LINGER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Opcode of a continuation frame (RFC 6455 §5.2).
const OPCODE_CONTINUE: u8 = 0x0;

/// The inbound half of a server-side WebSocket: a stream of whole (aggregated) client messages.
///
/// The stream ends after a Close message, at EOF (once every complete buffered frame is
/// yielded), or right after yielding its first error: a protocol error leaves the decoder in no
/// state to go on, and RFC 6455 says to fail the connection anyway.
pub struct WsReader {
    io: Arc<TcpStream>,
    codec: Codec,
    buf: BytesMut,
    max_bytes: usize,
    /// A fragmented message still missing its last frame.
    partial: Option<Partial>,
    state: ReadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer sent EOF; what is buffered is still delivered.
    Eof,
    Done,
}

/// The frames of a fragmented message received so far.
struct Partial {
    text: bool,
    parts: Vec<Bytes>,
    size: usize,
}

impl WsReader {
    /// Reads client frames from `io`, starting with `already_read` (bytes read past the handshake);
    /// frames and whole messages over `max_bytes` are errors.
    pub fn new(io: Arc<TcpStream>, already_read: BytesMut, max_bytes: usize) -> WsReader {
        // The HTTP layer hands over its read buffer, usually empty but with capacity to spare.
        let buf = if already_read.is_empty() { BytesMut::new() } else { already_read };
        WsReader { io, codec: Codec::new().max_size(max_bytes), buf, max_bytes, partial: None, state: ReadState::Open }
    }

    /// Capacity of the read buffer, so tests can check an idle reader holds none.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Ends the stream and lets go of everything buffered.
    fn finish(&mut self) {
        self.state = ReadState::Done;
        self.buf = BytesMut::new();
        self.partial = None;
    }

    /// The next whole message in the buffer, if one is complete.
    fn decode_buffered(&mut self) -> Result<Option<AggregatedMessage>, ProtocolError> {
        loop {
            self.check_declared_len()?;
            let decoded = self.codec.decode(&mut self.buf);
            // Payloads are split off the buffer, so an emptied buffer only holds spare capacity.
            self.release_if_empty();
            let Some(frame) = decoded? else { return Ok(None) };
            if let Some(message) = self.absorb(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// Refuses an oversized frame from its header alone: the codec only checks the size once the
    /// whole payload is buffered, so a header claiming gigabytes would otherwise be read in full.
    fn check_declared_len(&self) -> Result<(), ProtocolError> {
        let Some((opcode, len)) = frame_header(&self.buf) else { return Ok(()) };
        // The codec refuses reserved bits, an unmasked frame and an unknown opcode from the first
        // two bytes, before it reads the length; leaving it those errors keeps the outcome the
        // same however the bytes arrive.
        let (first, second) = (self.buf[0], self.buf[1]);
        if first & 0x70 != 0 || second & 0x80 == 0 || !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
            return Ok(());
        }
        // A control frame may not be fragmented (RFC 6455 §5.5). The codec would refuse it too,
        // once the payload is in, but it logs each one as an error: a client could fill the log.
        if first & 0x80 == 0 && opcode >= 0x8 {
            return Err(ProtocolError::ContinuationFragment(actix_http::ws::OpCode::from(opcode)));
        }
        let limit = match &self.partial {
            Some(partial) if opcode == OPCODE_CONTINUE => self.max_bytes.saturating_sub(partial.size),
            _ => self.max_bytes,
        };
        if len > limit as u64 { Err(ProtocolError::Overflow) } else { Ok(()) }
    }

    /// Folds one frame into the message being assembled; returns a message once one is whole.
    fn absorb(&mut self, frame: Frame) -> Result<Option<AggregatedMessage>, ProtocolError> {
        let message = match frame {
            Frame::Text(data) => AggregatedMessage::Text(utf8(data)?),
            Frame::Binary(data) => AggregatedMessage::Binary(data),
            Frame::Ping(data) => AggregatedMessage::Ping(data),
            Frame::Pong(data) => AggregatedMessage::Pong(data),
            Frame::Close(reason) => AggregatedMessage::Close(reason),
            Frame::Continuation(Item::FirstText(data)) => return self.start_partial(true, data),
            Frame::Continuation(Item::FirstBinary(data)) => return self.start_partial(false, data),
            Frame::Continuation(Item::Continue(data)) => {
                self.extend_partial(data)?;
                return Ok(None);
            }
            Frame::Continuation(Item::Last(data)) => {
                self.extend_partial(data)?;
                let Some(partial) = self.partial.take() else { return Err(ProtocolError::ContinuationNotStarted) };
                let data = join(partial.parts, partial.size);
                if partial.text { AggregatedMessage::Text(utf8(data)?) } else { AggregatedMessage::Binary(data) }
            }
        };
        Ok(Some(message))
    }

    fn start_partial(&mut self, text: bool, data: Bytes) -> Result<Option<AggregatedMessage>, ProtocolError> {
        if self.partial.is_some() {
            return Err(ProtocolError::ContinuationStarted);
        }
        self.partial = Some(Partial { text, parts: Vec::new(), size: 0 });
        self.extend_partial(data)?;
        Ok(None)
    }

    fn extend_partial(&mut self, data: Bytes) -> Result<(), ProtocolError> {
        let Some(partial) = self.partial.as_mut() else { return Err(ProtocolError::ContinuationNotStarted) };
        partial.size = partial.size.saturating_add(data.len());
        if partial.size > self.max_bytes {
            return Err(ProtocolError::Overflow);
        }
        // Empty fragments are skipped so a stream of them cannot grow the list without bound.
        if !data.is_empty() {
            partial.parts.push(data);
        }
        Ok(())
    }
}

impl WsReader {
    /// Appends `bytes` as if just read from the socket and returns the next whole message, or
    /// `None` if it is not complete yet: `poll_next`'s decoding without the I/O, so fuzz targets
    /// and property tests can drive it. After an error the stream would have ended; stop there.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<AggregatedMessage>, ProtocolError> {
        self.buf.extend_from_slice(bytes);
        self.decode_buffered()
    }
}

impl Stream for WsReader {
    type Item = Result<AggregatedMessage, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.state == ReadState::Done {
                return Poll::Ready(None);
            }
            match this.decode_buffered() {
                Ok(Some(message)) => {
                    if matches!(message, AggregatedMessage::Close(_)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(e) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.state == ReadState::Eof {
                // Anything left is a frame the peer never finished.
                this.finish();
                return Poll::Ready(None);
            }
            // Pending here has registered the waker; tokio's coop budget also bounds this loop.
            if let Err(e) = ready!(this.io.poll_read_ready(cx)) {
                this.finish();
                return Poll::Ready(Some(Err(ProtocolError::Io(e))));
            }
            this.buf.reserve(READ_CHUNK);
            match this.io.try_read_buf(&mut this.buf) {
                Ok(0) => this.state = ReadState::Eof,
                Ok(_) => {}
                // WouldBlock has cleared the readiness, so the next poll_read_ready registers.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    this.finish();
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
            }
            this.release_if_empty();
        }
    }
}

/// The opcode and declared payload length of the frame at the start of `buf`, once its header's
/// length fields have arrived.
fn frame_header(buf: &[u8]) -> Option<(u8, u64)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let len = match second & 0x7F {
        126 => u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        len => u64::from(len),
    };
    Some((first & 0x0F, len))
}

/// A text message whose bytes are not UTF-8, carried as the I/O error `ProtocolError` has room for.
#[derive(Debug, thiserror::Error)]
#[error("text frame is not valid UTF-8")]
struct InvalidUtf8;

fn utf8(data: Bytes) -> Result<ByteString, ProtocolError> {
    ByteString::try_from(data).map_err(|_| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8)))
}

/// Whether a reader error is a text message that was not UTF-8 (closed with 1007, not 1002).
pub fn is_invalid_utf8(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<InvalidUtf8>())
}

fn join(mut parts: Vec<Bytes>, size: usize) -> Bytes {
    if parts.len() <= 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(size);
    for part in parts {
        joined.extend_from_slice(&part);
    }
    joined.freeze()
}

/// A write failed or the socket was closed; no further frames can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("websocket connection closed")
    }
}

impl std::error::Error for Closed {}

/// The outbound half of a server-side WebSocket: sends unmasked frames, one per [`send`](Self::send),
/// or several with one write through [`queue`](Self::queue) and [`flush`](Self::flush).
///
/// A call's future may be dropped mid-write; the rest of what was queued goes out ahead of
/// anything later, so the peer never sees a torn frame.
pub struct WsWriter {
    io: Arc<TcpStream>,
    codec: Codec,
    buf: BytesMut,
    closed: bool,
    /// The connection's place under the edge's limit, given up with the writer.
    _slot: Option<super::edge::Slot>,
}

impl WsWriter {
    /// Writes server frames to `io`.
    pub fn new(io: Arc<TcpStream>) -> WsWriter {
        WsWriter { io, codec: Codec::new(), buf: BytesMut::new(), closed: false, _slot: None }
    }

    /// Keeps `slot` (the connection's place under the edge's limit) until the writer is gone.
    pub fn holding(mut self, slot: super::edge::Slot) -> WsWriter {
        self._slot = Some(slot);
        self
    }

    /// Sends a close frame, then lingers (see [`Self::linger`]) and gives up the writer.
    pub async fn close(mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.send(Message::Close(reason)).await?;
        self.linger().await;
        Ok(())
    }

    /// After the close frame: once the reader is gone, half-closes the stream and reads and
    /// discards what the client still sends until it closes too, for at most [`LINGER`].
    ///
    /// Closing a socket with unread bytes in its receive buffer makes the kernel send a reset,
    /// and a reset can overtake the close frame: a client whose frame was too large saw a
    /// broken connection instead of 1009. Draining first lets the close frame arrive.
    async fn linger(self) {
        let io = self.io;
        let _ = tokio::time::timeout(LINGER, async move {
            // The reader still runs until the client's own close frame (or an error) ends it.
            while Arc::strong_count(&io) > 1 {
                tokio::time::sleep(LINGER_POLL).await;
            }
            let _ = socket2::SockRef::from(&*io).shutdown(std::net::Shutdown::Write);
            let mut scratch = [0u8; 4096];
            loop {
                if io.readable().await.is_err() {
                    return;
                }
                match io.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }

    /// Encodes a message into the write buffer without writing it: [`flush`](Self::flush) then
    /// sends everything queued with one write, as a burst of frames should go.
    pub fn queue(&mut self, message: Message) -> Result<(), Closed> {
        if self.closed {
            return Err(Closed);
        }
        // Only continuation messages can fail to encode, and none are sent here.
        if self.codec.encode(message, &mut self.buf).is_err() {
            return self.fail();
        }
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the write buffer, so tests can check an idle writer holds none.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Sends one message (RFC 6455 limits control payloads to 125 bytes).
    pub async fn send(&mut self, message: Message) -> Result<(), Closed> {
        self.queue(message)?;
        self.flush().await
    }

    /// Writes out everything queued, then frees the buffer.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if self.closed {
            return Err(Closed);
        }
        while !self.buf.is_empty() {
            match self.io.try_write(&self.buf) {
                Ok(0) => return self.fail(),
                Ok(n) => self.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.io.writable().await.is_err() {
                        return self.fail();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(),
            }
        }
        self.buf = BytesMut::new();
        Ok(())
    }

    fn fail(&mut self) -> Result<(), Closed> {
        self.closed = true;
        self.buf = BytesMut::new();
        Err(Closed)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_http::ws::{CloseCode, OpCode};
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A connected loopback pair: the client end and the shared server end.
    async fn pair() -> (TcpStream, Arc<TcpStream>) {
        let listener = timeout(LIMIT, TcpListener::bind("127.0.0.1:0")).await.expect("bind timed out").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (client, accepted) = timeout(LIMIT, async { tokio::join!(TcpStream::connect(addr), listener.accept()) })
            .await
            .expect("timed out");
        (client.expect("connect"), Arc::new(accepted.expect("accept").0))
    }

    /// Masked client frames, encoded in order by one client codec (so continuations work).
    fn client_frames(messages: Vec<Message>) -> BytesMut {
        let mut codec = Codec::new().client_mode();
        let mut out = BytesMut::new();
        for message in messages {
            codec.encode(message, &mut out).expect("encode");
        }
        out
    }

    async fn send(client: &mut TcpStream, bytes: &[u8]) {
        timeout(LIMIT, client.write_all(bytes)).await.expect("write timed out").expect("write");
    }

    async fn next(reader: &mut WsReader) -> Option<Result<AggregatedMessage, ProtocolError>> {
        timeout(LIMIT, reader.next()).await.expect("reader timed out")
    }

    async fn next_ok(reader: &mut WsReader) -> AggregatedMessage {
        match next(reader).await {
            Some(Ok(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads from the client end until `codec` decodes one server frame.
    async fn client_read(client: &mut TcpStream, codec: &mut Codec, buf: &mut BytesMut) -> Frame {
        timeout(LIMIT, async {
            loop {
                if let Some(frame) = codec.decode(buf).expect("server frame decodes") {
                    return frame;
                }
                let n = client.read_buf(buf).await.expect("client read");
                assert!(n > 0, "server closed before a whole frame arrived");
            }
        })
        .await
        .expect("client read timed out")
    }

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn reader_and_writer_can_move_between_tasks() {
        fn check<T: Send + Unpin + 'static>() {}
        check::<WsReader>();
        check::<WsWriter>();
    }

    #[tokio::test]
    async fn text_and_binary_round_trip_and_leave_no_buffers() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(Arc::clone(&server), BytesMut::with_capacity(8192), 1024);
        let mut writer = WsWriter::new(server);
        assert_eq!(reader.buffered_capacity(), 0, "an empty handed-over buffer is dropped");

        let bin = Bytes::from_static(&[0, 1, 2, 255]);
        send(&mut client, &client_frames(vec![text("héllo"), Message::Binary(bin.clone())])).await;
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "héllo"));
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Binary(b) if b == bin));
        assert_eq!(reader.buffered_capacity(), 0);

        timeout(LIMIT, writer.send(text("from server"))).await.expect("timed out").expect("text");
        timeout(LIMIT, writer.send(Message::Binary(bin.clone()))).await.expect("timed out").expect("binary");
        timeout(LIMIT, writer.send(Message::Pong(Bytes::from_static(b"p")))).await.expect("timed out").expect("pong");
        assert_eq!(writer.buffered_capacity(), 0);

        let mut codec = Codec::new().client_mode();
        let mut buf = BytesMut::new();
        assert_eq!(
            client_read(&mut client, &mut codec, &mut buf).await,
            Frame::Text(Bytes::from_static(b"from server"))
        );
        assert_eq!(client_read(&mut client, &mut codec, &mut buf).await, Frame::Binary(bin));
        assert_eq!(client_read(&mut client, &mut codec, &mut buf).await, Frame::Pong(Bytes::from_static(b"p")));
    }

    #[tokio::test]
    async fn already_read_bytes_are_decoded_first() {
        let (mut client, server) = pair().await;
        let bytes = client_frames(vec![text("first"), text("second message")]);
        let first_len = client_frames(vec![text("first")]).len();
        let cut = first_len + (bytes.len() - first_len) / 2;
        let already_read = BytesMut::from(&bytes[..cut]);
        let mut reader = WsReader::new(server, already_read, 1024);

        // Nothing is on the socket yet, so the first message can only come from `already_read`.
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "first"));
        assert!(reader.buffered_capacity() > 0, "the half frame stays buffered");
        send(&mut client, &bytes[cut..]).await;
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "second message"));
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn continuations_are_joined_around_a_ping() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        send(
            &mut client,
            &client_frames(vec![
                Message::Continuation(Item::FirstText(Bytes::from_static(b"one "))),
                Message::Ping(Bytes::from_static(b"hi")),
                Message::Continuation(Item::Continue(Bytes::from_static(b"two "))),
                Message::Continuation(Item::Last(Bytes::from_static(b"three"))),
                Message::Continuation(Item::FirstBinary(Bytes::from_static(b"\x01"))),
                Message::Continuation(Item::Last(Bytes::from_static(b"\x02"))),
            ]),
        )
        .await;
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Ping(p) if p == "hi"));
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "one two three"));
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Binary(b) if b == b"\x01\x02"[..]));
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_an_error_and_ends_the_stream() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 16);
        send(&mut client, &client_frames(vec![text(&"x".repeat(17))])).await;
        assert!(matches!(next(&mut reader).await, Some(Err(ProtocolError::Overflow))));
        assert!(next(&mut reader).await.is_none());
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_before_its_payload_arrives() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        // A masked binary frame declaring 1 GiB; no payload follows.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        send(&mut client, &header).await;
        assert!(matches!(next(&mut reader).await, Some(Err(ProtocolError::Overflow))));
    }

    #[tokio::test]
    async fn a_fragmented_ping_is_refused_from_its_header_before_the_codec_sees_it() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        // A masked ping without FIN, declaring 4 bytes; its payload never comes, so only an
        // answer from the header can end this read (the codec would wait, then log an error).
        send(&mut client, &[0x09, 0x80 | 4, 1, 2, 3, 4]).await;
        assert!(matches!(next(&mut reader).await, Some(Err(ProtocolError::ContinuationFragment(OpCode::Ping)))));
    }

    /// A reader limited to `limit` bytes, sent one binary message of two 6-byte fragments by the
    /// client returned with it.
    async fn twelve_bytes_in_two_fragments(limit: usize) -> (TcpStream, WsReader) {
        let (mut client, server) = pair().await;
        let reader = WsReader::new(server, BytesMut::new(), limit);
        let six = Bytes::from_static(b"123456");
        let frames = client_frames(vec![
            Message::Continuation(Item::FirstBinary(six.clone())),
            Message::Continuation(Item::Last(six)),
        ]);
        send(&mut client, &frames).await;
        (client, reader)
    }

    #[tokio::test]
    async fn the_limit_counts_the_whole_fragmented_message_not_one_frame() {
        let (_client, mut over) = twelve_bytes_in_two_fragments(10).await;
        assert!(matches!(next(&mut over).await, Some(Err(ProtocolError::Overflow))));
        assert!(next(&mut over).await.is_none());
        // Exactly at the limit is fine: the aggregation check is `>`, not `>=`.
        let (_other_client, mut at) = twelve_bytes_in_two_fragments(12).await;
        assert!(matches!(next_ok(&mut at).await, AggregatedMessage::Binary(b) if b == "123456123456"));
    }

    #[tokio::test]
    async fn eof_after_a_frame_yields_the_frame_then_ends() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        send(&mut client, &client_frames(vec![text("last words"), text("and more")])).await;
        drop(client);
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "last words"));
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Text(t) if t == "and more"));
        assert!(next(&mut reader).await.is_none());
        assert!(next(&mut reader).await.is_none(), "the stream stays ended");
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn eof_mid_frame_ends_the_stream() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        let bytes = client_frames(vec![text("cut short")]);
        send(&mut client, &bytes[..bytes.len() - 2]).await;
        drop(client);
        assert!(next(&mut reader).await.is_none());
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn a_close_frame_ends_the_stream() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        let reason = CloseReason { code: CloseCode::Normal, description: Some("bye".into()) };
        send(&mut client, &client_frames(vec![Message::Close(Some(reason.clone())), text("after close")])).await;
        assert!(matches!(next_ok(&mut reader).await, AggregatedMessage::Close(Some(r)) if r == reason));
        assert!(next(&mut reader).await.is_none());
    }

    #[tokio::test]
    async fn an_unmasked_client_frame_is_an_error() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        let mut unmasked = BytesMut::new();
        Codec::new().encode(text("no mask"), &mut unmasked).expect("encode");
        send(&mut client, &unmasked).await;
        assert!(matches!(next(&mut reader).await, Some(Err(ProtocolError::UnmaskedFrame))));
        assert!(next(&mut reader).await.is_none());
    }

    #[tokio::test]
    async fn invalid_utf8_text_is_an_error() {
        let (mut client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        let bad = Bytes::from_static(b"\xff\xfe");
        let mut codec = Codec::new().client_mode();
        let mut frames = BytesMut::new();
        // The codec's encoder takes text as a `ByteString`; a fragmented text message carries raw bytes.
        codec.encode(Message::Continuation(Item::FirstText(bad)), &mut frames).expect("encode");
        codec.encode(Message::Continuation(Item::Last(Bytes::new())), &mut frames).expect("encode");
        send(&mut client, &frames).await;
        match next(&mut reader).await {
            Some(Err(ProtocolError::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            other => panic!("expected invalid data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reset_connection_yields_one_io_error_then_ends() {
        let (client, server) = pair().await;
        let mut reader = WsReader::new(server, BytesMut::new(), 1024);
        client.set_zero_linger().expect("linger");
        drop(client);
        assert!(matches!(next(&mut reader).await, Some(Err(ProtocolError::Io(_)))));
        assert!(next(&mut reader).await.is_none());
    }

    #[tokio::test]
    async fn a_large_frame_is_written_whole_past_a_full_socket() {
        let (mut client, server) = pair().await;
        let mut writer = WsWriter::new(server);
        let big = Bytes::from(vec![7u8; 16 * 1024 * 1024]);
        let expected = big.clone();
        let sending = tokio::spawn(async move {
            let sent = writer.send(Message::Binary(big)).await;
            (sent, writer.buffered_capacity())
        });
        // The payload is bigger than the socket buffers, so the writer must wait for the reader.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sending.is_finished(), "the socket took 16 MiB unread; this test proves nothing");
        let mut codec = Codec::new().client_mode().max_size(32 * 1024 * 1024);
        let mut buf = BytesMut::new();
        assert_eq!(client_read(&mut client, &mut codec, &mut buf).await, Frame::Binary(expected));
        let (sent, capacity) = timeout(LIMIT, sending).await.expect("writer timed out").expect("writer task");
        assert_eq!(sent, Ok(()));
        assert_eq!(capacity, 0);
    }

    #[tokio::test]
    async fn close_sends_a_close_frame() {
        let (mut client, server) = pair().await;
        let writer = WsWriter::new(server);
        let reason = CloseReason { code: CloseCode::Away, description: Some("shutting down".into()) };
        timeout(LIMIT, writer.close(Some(reason.clone()))).await.expect("timed out").expect("close");
        let mut codec = Codec::new().client_mode();
        let mut buf = BytesMut::new();
        assert_eq!(client_read(&mut client, &mut codec, &mut buf).await, Frame::Close(Some(reason)));
    }

    #[tokio::test]
    async fn writes_to_a_gone_peer_fail_and_stay_failed() {
        let (client, server) = pair().await;
        let mut writer = WsWriter::new(server);
        client.set_zero_linger().expect("linger");
        drop(client);
        let failed = timeout(LIMIT, async {
            loop {
                if writer.send(text("anyone there?")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "writes to a reset socket kept succeeding");
        assert_eq!(writer.buffered_capacity(), 0);
        assert_eq!(timeout(LIMIT, writer.send(Message::Ping(Bytes::new()))).await.expect("timed out"), Err(Closed));
    }
}

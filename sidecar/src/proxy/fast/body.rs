//! Response bodies on the HTTP/1.1 fast path, relayed as they come (never
//! held whole: memory per connection stays one read buffer), with the
//! framing read only to know where each body ends.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::response::Framing;

/// Bytes read from an instance at a time.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Bytes read at a time while waiting for a head: most answers fit.
pub(super) const HEAD_CHUNK: usize = 8 * 1024;
/// Longest chunk-size line, and longest trailer section, accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a relay stopped before the body's end.
#[derive(Debug)]
pub(super) enum RelayError {
    /// The instance failed or broke the framing.
    Upstream(String),
    /// The caller went away.
    Downstream,
}

/// Relays a response: `head` (already rewritten), then the body framed by
/// `framing`, from `buf` (bytes already read past the head) and then from
/// `up`, to `down`. Leaves in `buf` whatever the instance sent past the
/// body's end.
pub(super) async fn relay<U, D>(
    framing: Framing,
    head: &[u8],
    buf: &mut BytesMut,
    up: &mut U,
    down: &mut D,
) -> Result<(), RelayError>
where
    U: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    let mut writer = Writer {
        down,
        head: Some(head),
    };
    match framing {
        Framing::Empty => writer.write(&[]).await,
        Framing::Length(mut left) => loop {
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            writer.write(&buf[..take]).await?;
            buf.advance(take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            let want = usize::try_from(left).unwrap_or(READ_CHUNK).min(READ_CHUNK);
            read_more(up, buf, want, "before the end of its Content-Length body").await?;
        },
        Framing::UntilClose => loop {
            writer.write(&buf[..]).await?;
            buf.clear();
            buf.reserve(READ_CHUNK);
            match up.read_buf(buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(RelayError::Upstream(format!("read failed: {e}"))),
            }
        },
        Framing::Chunked => {
            let mut chunks = Chunks::Size;
            loop {
                let (done, ended) = chunks.scan(buf)?;
                writer.write(&buf[..done]).await?;
                buf.advance(done);
                if ended {
                    return Ok(());
                }
                read_more(up, buf, READ_CHUNK, "in the middle of a chunked body").await?;
            }
        }
    }
}

/// Writes to the caller, the head going out with the first body bytes.
struct Writer<'a, D> {
    down: &'a mut D,
    head: Option<&'a [u8]>,
}

impl<D: AsyncWrite + Unpin> Writer<'_, D> {
    async fn write(&mut self, body: &[u8]) -> Result<(), RelayError> {
        let written = match self.head.take() {
            // One write for a small answer: head and body together.
            Some(head) if body.len() <= 16 * 1024 => write_both(self.down, head, body).await,
            Some(head) => match self.down.write_all(head).await {
                Ok(()) => self.down.write_all(body).await,
                Err(e) => Err(e),
            },
            None if body.is_empty() => Ok(()),
            None => self.down.write_all(body).await,
        };
        written.map_err(|_| RelayError::Downstream)
    }
}

/// Writes `head` then `body`, in one `writev` where `down` takes vectors
/// (a TCP socket; a QUIC stream takes the head first, then the rest).
async fn write_both<D: AsyncWrite + Unpin>(
    down: &mut D,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
    let written = down.write_vectored(&slices).await?;
    match written.checked_sub(head.len()) {
        Some(of_body) => {
            down.write_all(body.get(of_body..).unwrap_or_default())
                .await
        }
        None => {
            down.write_all(head.get(written..).unwrap_or_default())
                .await?;
            down.write_all(body).await
        }
    }
}

async fn read_more<U: AsyncRead + Unpin>(
    up: &mut U,
    buf: &mut BytesMut,
    want: usize,
    when: &str,
) -> Result<(), RelayError> {
    buf.reserve(want);
    match up.read_buf(buf).await {
        Ok(0) => Err(RelayError::Upstream(format!("the instance closed {when}"))),
        Ok(_) => Ok(()),
        Err(e) => Err(RelayError::Upstream(format!("read failed {when}: {e}"))),
    }
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

impl Chunks {
    /// Walks `buf` as far as it goes: how many bytes belong to the body,
    /// and whether the body ended there.
    fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), RelayError> {
        let bad = |why: &str| RelayError::Upstream(format!("invalid chunked body: {why}"));
        let mut done = 0;
        loop {
            let rest = &buf[done..];
            match *self {
                Chunks::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        done += used;
                        *self = if size == 0 {
                            Chunks::Trailers
                        } else {
                            Chunks::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => {
                        return Ok((done, false))
                    }
                    _ => return Err(bad("a bad chunk-size line")),
                },
                Chunks::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    done += take;
                    if take as u64 == left {
                        *self = Chunks::DataEnd;
                    } else {
                        *self = Chunks::Data(left - take as u64);
                        return Ok((done, false));
                    }
                }
                Chunks::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((done, false));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(bad("chunk data longer than its size"));
                    }
                    done += 2;
                    *self = Chunks::Size;
                }
                Chunks::Trailers => {
                    if rest.starts_with(b"\r\n") {
                        return Ok((done + 2, true));
                    }
                    match rest.windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(at) => return Ok((done + at + 4, true)),
                        None if rest.len() <= MAX_TRAILERS => return Ok((done, false)),
                        None => return Err(bad("trailers over 64 KiB")),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relays `sent` (split into `pieces` reads) with `framing`: what the
    /// caller got, what stayed in the buffer, and the outcome.
    async fn relayed(
        framing: Framing,
        sent: &[u8],
        piece: usize,
    ) -> (Vec<u8>, Vec<u8>, Result<(), RelayError>) {
        let mut reads = tokio_test_reads(sent, piece);
        let mut down = Vec::new();
        let mut buf = BytesMut::new();
        let result = relay(framing, b"HEAD|", &mut buf, &mut reads, &mut down).await;
        (down, buf.to_vec(), result)
    }

    /// A reader giving `data` `piece` bytes at a time, then end of stream.
    fn tokio_test_reads(data: &[u8], piece: usize) -> Pieces {
        Pieces {
            left: data
                .chunks(piece.max(1))
                .map(<[u8]>::to_vec)
                .rev()
                .collect(),
        }
    }

    struct Pieces {
        left: Vec<Vec<u8>>,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(piece) = self.left.pop() {
                buf.put_slice(&piece);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunked_bodies_pass_whole_with_trailers_and_stop_at_their_end() {
        let body = b"5;ext=1\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let mut sent = body.to_vec();
            sent.extend_from_slice(b"NEXT");
            let (down, rest, result) = relayed(Framing::Chunked, &sent, piece).await;
            assert!(result.is_ok(), "piece {piece}: {result:?}");
            let mut expected = b"HEAD|".to_vec();
            expected.extend_from_slice(body);
            assert_eq!(down, expected, "piece {piece}");
            // Bytes past the end stay unread or in the buffer, never relayed.
            assert!(
                b"NEXT".starts_with(&rest) || rest.is_empty() || rest == b"NEXT",
                "{rest:?}"
            );
        }
        let (down, _, result) = relayed(Framing::Chunked, b"0\r\n\r\n", 1).await;
        assert!(result.is_ok());
        assert_eq!(down, b"HEAD|0\r\n\r\n");
    }

    #[tokio::test]
    async fn broken_chunked_bodies_and_short_lengths_are_upstream_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"3\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhel",
        ] {
            let (_, _, result) = relayed(Framing::Chunked, bad, 4).await;
            assert!(
                matches!(result, Err(RelayError::Upstream(_))),
                "{bad:?}: {result:?}"
            );
        }
        let (down, _, result) = relayed(Framing::Length(10), b"short", 2).await;
        assert!(matches!(result, Err(RelayError::Upstream(_))), "{result:?}");
        assert!(down.starts_with(b"HEAD|"));
    }

    #[tokio::test]
    async fn lengths_stop_at_their_end_and_until_close_reads_to_the_end() {
        let (down, rest, result) = relayed(Framing::Length(5), b"helloEXTRA", 3).await;
        assert!(result.is_ok());
        assert_eq!(down, b"HEAD|hello");
        assert!(
            rest.is_empty() || b"EXTRA".starts_with(&rest[..]),
            "{rest:?}"
        );
        let (down, _, result) = relayed(Framing::UntilClose, b"all of it", 2).await;
        assert!(result.is_ok());
        assert_eq!(down, b"HEAD|all of it");
        let (down, _, result) = relayed(Framing::Empty, b"ignored", 2).await;
        assert!(result.is_ok());
        assert_eq!(down, b"HEAD|");
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: the scan never panics, never claims
        /// more than it was given, and reads a body it ended no further.
        #[test]
        fn the_chunk_scan_takes_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), cut in 0usize..512) {
            let cut = cut.min(bytes.len());
            let mut chunks = Chunks::Size;
            // The first piece as it arrives, then the rest behind what it left.
            if let Ok((done, ended)) = chunks.scan(&bytes[..cut]) {
                proptest::prop_assert!(done <= cut);
                if !ended {
                    if let Ok((more, _)) = chunks.scan(&bytes[done..]) {
                        proptest::prop_assert!(done + more <= bytes.len());
                    }
                }
            }
        }

        /// A chunked body of any chunks, trailers or not, read in pieces of
        /// any size, passes whole and ends exactly at its end.
        #[test]
        fn any_chunked_body_passes_whole(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..300), 0..8),
            trailers in proptest::bool::ANY,
            piece in 1usize..64,
        ) {
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(if trailers { b"0\r\nx-sum: 1\r\n\r\n".as_slice() } else { b"0\r\n\r\n".as_slice() });
            let mut sent = body.clone();
            sent.extend_from_slice(b"GET /next");
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let (down, rest, result) = runtime.block_on(relayed(Framing::Chunked, &sent, piece));
            proptest::prop_assert!(result.is_ok(), "{:?}", result);
            proptest::prop_assert_eq!(&down[5..], &body[..]);
            proptest::prop_assert!(b"GET /next".starts_with(&rest) || rest.is_empty());
        }
    }
}

//! Content codings of file bodies (RFC 9110 §8.4; gzip is RFC 1952): identity passes through, gzip
//! is inflated here. Not by reqwest: its decoder yields 4 KiB chunks, at which zlib-rs is no faster
//! than miniz_oxide; into 64 KiB chunks it is ~45 % faster, and the splitter and destination see
//! 16 times fewer chunks.
use bytes::{Buf, Bytes};
use flate2::{Decompress, FlushDecompress, Status};
use futures::{stream::BoxStream, Stream, StreamExt, TryStreamExt};
use reqwest::header::CONTENT_ENCODING;

/// What file requests send as `Accept-Encoding`.
pub const ACCEPTED: &str = "gzip";
/// Size of each decoded chunk handed to the line splitter and the destination.
const DECODED_CHUNK_BYTES: usize = 64 * 1024;
/// The largest deflate window, which gzip senders may use.
const WINDOW_BITS: u8 = 15;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// From reqwest, without its URL (queries of file URLs can be signatures).
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("the gzip body could not be decoded: {0}")]
    Corrupt(#[from] flate2::DecompressError),
    #[error("the gzip body could not be decoded: it ends inside a member")]
    Truncated,
    #[error("content-encoding {0:?} was not asked for (only gzip is)")]
    Unsupported(String),
    #[error("the gzip body expands more than {0} times (MAX_GZIP_RATIO): a compression bomb, not an export")]
    Bomb(u64),
    /// An encrypted (Bulk Submit) file that does not decrypt.
    #[error("the file could not be decrypted: {0}")]
    Jwe(#[from] crate::jobs::jwe::JweError),
    /// A decrypted file read back from its spool (`jobs::spool`): a local fault, worth a retry.
    #[error("the decrypted file could not be read back from its spool")]
    Spool(#[source] std::io::Error),
}

/// Decoded bytes before the ratio is judged: small files of repeated lines may compress far.
const RATIO_FLOOR_BYTES: u64 = 8 * 1024 * 1024;

/// The decoded body of a file response.
pub fn decoded_body(
    resp: reqwest::Response,
    max_ratio: u64,
) -> Result<BoxStream<'static, Result<Bytes, DecodeError>>, DecodeError> {
    let coding =
        resp.headers().get(CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let raw = resp.bytes_stream().map_err(|e| DecodeError::Http(e.without_url()));
    match coding.as_deref() {
        None | Some("identity") => Ok(raw.boxed()),
        Some("gzip" | "x-gzip") => Ok(gunzip(raw, max_ratio).boxed()),
        Some(other) => Err(DecodeError::Unsupported(other.into())),
    }
}

struct Gunzip<S> {
    input: S,
    pending: Bytes,
    inflate: Decompress,
    input_done: bool,
    member_done: bool,
    /// Compressed bytes consumed and decoded bytes produced, over all members.
    wire: u64,
    decoded: u64,
    max_ratio: u64,
}

/// Inflate a gzip stream of one or more members (RFC 1952 §2.2) into full-size chunks.
fn gunzip<S>(input: S, max_ratio: u64) -> impl Stream<Item = Result<Bytes, DecodeError>>
where
    S: Stream<Item = Result<Bytes, DecodeError>> + Unpin,
{
    let state = Gunzip {
        input,
        pending: Bytes::new(),
        inflate: Decompress::new_gzip(WINDOW_BITS),
        input_done: false,
        member_done: false,
        wire: 0,
        decoded: 0,
        max_ratio,
    };
    futures::stream::try_unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Ok(chunk.map(|c| (c, s)))
    })
}

impl<S> Gunzip<S>
where
    S: Stream<Item = Result<Bytes, DecodeError>> + Unpin,
{
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let mut out = Vec::with_capacity(DECODED_CHUNK_BYTES);
        while out.len() < out.capacity() {
            if self.pending.is_empty() && !self.input_done {
                match self.input.next().await.transpose()? {
                    Some(bytes) => self.pending = bytes,
                    None => self.input_done = true,
                }
                continue;
            }
            if self.member_done {
                if self.pending.is_empty() {
                    break;
                }
                // Another member follows (concatenated gzip files are one gzip file).
                self.inflate = Decompress::new_gzip(WINDOW_BITS);
                self.member_done = false;
            }
            if self.pending.is_empty() {
                // An empty body is an empty file, however it is labelled.
                return if self.inflate.total_in() == 0 { Ok(None) } else { Err(DecodeError::Truncated) };
            }
            let before = self.inflate.total_in();
            let status = self.inflate.decompress_vec(&self.pending, &mut out, FlushDecompress::None)?;
            let consumed = self.inflate.total_in() - before;
            self.pending.advance(consumed as usize);
            self.wire += consumed;
            self.member_done = status == Status::StreamEnd;
        }
        self.decoded += out.len() as u64;
        if self.decoded > RATIO_FLOOR_BYTES && self.decoded > self.max_ratio.saturating_mul(self.wire) {
            return Err(DecodeError::Bomb(self.max_ratio));
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// Feed `body` in pieces of `piece` bytes and collect the decoded chunks.
    async fn decode(body: &[u8], piece: usize) -> Result<Vec<Bytes>, DecodeError> {
        let pieces: Vec<Result<Bytes, DecodeError>> =
            body.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        gunzip(futures::stream::iter(pieces), 1000).try_collect().await
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"{\"resourceType\":\"Observation\"}\n"[i % 31] ^ (i / 997) as u8).collect()
    }

    #[tokio::test]
    async fn a_body_decodes_to_the_original_bytes_in_full_chunks_whatever_the_network_pieces() {
        let data = sample(300_000);
        for piece in [1, 7, 4096, 1 << 20] {
            let chunks = decode(&gz(&data), piece).await.unwrap();
            assert_eq!(chunks.concat(), data, "piece {piece}");
            assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == DECODED_CHUNK_BYTES));
        }
    }

    #[tokio::test]
    async fn concatenated_members_decode_as_one_body() {
        let (a, b) = (sample(70_000), sample(5));
        let body = [gz(&a), gz(&b)].concat();
        assert_eq!(decode(&body, 1000).await.unwrap().concat(), [a, b].concat());
    }

    #[tokio::test]
    async fn a_body_that_expands_past_the_ratio_is_a_bomb_once_past_the_floor() {
        let small = gz(&vec![b'\n'; 1024 * 1024]);
        assert_eq!(decode(&small, 4096).await.unwrap().concat().len(), 1024 * 1024, "under the floor");
        let bomb = gz(&vec![b'\n'; 64 * 1024 * 1024]);
        assert!(matches!(decode(&bomb, 4096).await, Err(DecodeError::Bomb(1000))));
    }

    #[tokio::test]
    async fn a_body_cut_short_or_corrupt_is_an_error() {
        let body = gz(&sample(100_000));
        assert!(matches!(decode(&body[..body.len() - 4], 512).await, Err(DecodeError::Truncated)));
        let mut bad = body.clone();
        bad[20] ^= 0xff;
        assert!(decode(&bad, 512).await.is_err());
        assert!(decode(b"not gzip at all", 512).await.unwrap_err().to_string().contains("decod"));
    }
}

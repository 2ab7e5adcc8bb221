//! Where an encrypted (Bulk Submit `fileEncryptionKey`) file's plaintext waits until its
//! authentication tag verifies. AES-GCM authenticates only at the end of the ciphertext, so no
//! line of it may reach a destination, a count or a screen before then: the plaintext is written
//! here as it is decrypted and read back only once the tag holds. The spool is an unnamed file
//! (`O_TMPFILE`, mode 0600) in an owner-only directory: it has no name to leak, and the kernel
//! frees it when it is dropped, also when the process dies. Its size is bounded by the file's
//! byte bounds, counted as its plaintext arrives.
use std::{io, path::Path};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

/// Bytes read back from the spool at a time (the decoded chunk size of plain bodies).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A spool being filled.
pub struct Spool {
    file: BufWriter<tokio::fs::File>,
    bytes: u64,
}

impl Spool {
    /// A new, empty spool in `dir` (created owner-only if missing).
    pub fn create(dir: &Path) -> io::Result<Self> {
        crate::owner_only::dir(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        Ok(Self {
            file: BufWriter::with_capacity(READ_CHUNK_BYTES, tokio::fs::File::from_std(file)),
            bytes: 0,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk).await?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Everything written, from its start; the file goes when the stream is dropped.
    pub async fn read_back(mut self) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + Unpin> {
        self.file.flush().await?;
        let mut file = self.file.into_inner();
        file.rewind().await?;
        Ok(ReaderStream::with_capacity(file, READ_CHUNK_BYTES).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn what_is_written_reads_back_whole_and_leaves_no_name_behind() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        let mut spool = Spool::create(&dir).unwrap();
        let line: Vec<u8> = (0..1000u32).flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes()).collect();
        for _ in 0..20 {
            spool.write(&line).await.unwrap();
        }
        assert_eq!(spool.len(), 20 * line.len() as u64);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the spool directory is owner-only");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the spool has no name in the directory");
        let mut back = Vec::new();
        let mut chunks = spool.read_back().await.unwrap();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= READ_CHUNK_BYTES);
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, line.repeat(20));
    }
}

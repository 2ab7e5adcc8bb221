//! Bulk Submit's encrypted manifests and files (`fileEncryptionKey`): a compact JWE (RFC 7516)
//! with `alg: dir` and AES-GCM content encryption (`A128GCM`, `A192GCM`, `A256GCM`), under the
//! key the submission gave. A file is decrypted as it streams, so memory stays flat in its size:
//! the ciphertext's base64url is decoded in whole quanta and fed to OpenSSL's AES-GCM (already in
//! the tree under josekit), and the tag is checked at the end. Until then nothing read is
//! trusted: a file whose tag fails is failed and what it stored is removed. With a key, a body
//! that is not a JWE is refused (else whoever can swap it would bypass the key). Other algorithms
//! (key wrapping, ECDH-ES, RSA) and compressed (`zip`) JWEs are refused by name.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use openssl::symm::{Cipher, Crypter, Mode};
use serde_json::Value;

/// Longest protected header, IV or tag segment we read before giving up on a body.
const MAX_SEGMENT_BYTES: usize = 16 * 1024;
/// AES-GCM's full authentication tag.
const TAG_BYTES: usize = 16;
/// Base64url characters decoded at once (a multiple of 4: whole quanta).
const QUANTUM_CHARS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum JweError {
    #[error("the JWE is malformed: {0}")]
    Malformed(String),
    #[error("the JWE uses {0}; only alg 'dir' with enc A128GCM, A192GCM or A256GCM under the submission's fileEncryptionKey is supported")]
    Unsupported(String),
    #[error("the JWE's enc {enc} does not fit the submission's {bits}-bit fileEncryptionKey")]
    KeySize { enc: String, bits: usize },
    #[error("the JWE's authentication tag does not match: the content was altered, or the key is not the one it was encrypted with")]
    Tag,
    #[error("AES-GCM failed: {0}")]
    Cipher(#[from] openssl::error::ErrorStack),
    /// The submission gave a key, but this body is not a JWE: it is not taken as it is.
    #[error("it is not a JWE, though the submission gave a fileEncryptionKey; a body that is not encrypted is not taken")]
    NotEncrypted,
}

/// A content key (`dir`): 16, 24 or 32 bytes.
#[derive(Clone)]
pub struct ContentKey(Vec<u8>);

impl ContentKey {
    /// From a `kty: oct` JWK, or the base64url key bytes themselves.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let b64 = match serde_json::from_str::<Value>(raw) {
            Ok(jwk) => {
                if jwk.get("kty").and_then(Value::as_str) != Some("oct") {
                    return Err("the key must be a symmetric JWK (kty 'oct') or base64url key bytes".into());
                }
                jwk.get("k").and_then(Value::as_str).ok_or("the JWK has no 'k'")?.to_string()
            }
            Err(_) => raw.to_string(),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| "the key is not base64url".to_string())?;
        match bytes.len() {
            16 | 24 | 32 => Ok(Self(bytes)),
            n => Err(format!("the key is {} bits; AES-GCM takes 128, 192 or 256", n * 8)),
        }
    }

    /// The stored form (base64url).
    pub fn encoded(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    fn cipher(&self, enc: &str) -> Result<Cipher, JweError> {
        let bits = self.0.len() * 8;
        let cipher = match enc {
            "A128GCM" => (Cipher::aes_128_gcm(), 128),
            "A192GCM" => (Cipher::aes_192_gcm(), 192),
            "A256GCM" => (Cipher::aes_256_gcm(), 256),
            other => return Err(JweError::Unsupported(format!("enc '{other}'"))),
        };
        if cipher.1 != bits {
            return Err(JweError::KeySize { enc: enc.into(), bits });
        }
        Ok(cipher.0)
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentKey(<{} bits, hidden>)", self.0.len() * 8)
    }
}

/// Whether a body reads as a compact JWE rather than JSON or NDJSON (which begin with `{`).
pub fn looks_encrypted(first: &[u8]) -> bool {
    first.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b'{' && *b != b'[')
}

/// Where the decoder is in `header.key.iv.ciphertext.tag`.
enum Stage {
    Header,
    Key,
    Iv,
    Ciphertext,
    Tag,
    Done,
}

/// A compact JWE decrypted as its bytes arrive.
pub struct Decrypter {
    key: ContentKey,
    stage: Stage,
    /// The segment being read (header, key, IV, tag), or undecoded ciphertext characters.
    pending: BytesMut,
    aad: Vec<u8>,
    enc: String,
    crypter: Option<Crypter>,
    block: usize,
}

impl Decrypter {
    pub fn new(key: ContentKey) -> Self {
        Self {
            key,
            stage: Stage::Header,
            pending: BytesMut::new(),
            aad: Vec::new(),
            enc: String::new(),
            crypter: None,
            block: 0,
        }
    }

    /// Take the next bytes of the JWE; the plaintext they complete.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Bytes, JweError> {
        let mut out = BytesMut::new();
        while !input.is_empty() {
            match self.stage {
                Stage::Ciphertext => {
                    let end = input.iter().position(|b| *b == b'.');
                    let (chars, rest) = input.split_at(end.unwrap_or(input.len()));
                    self.pending.extend_from_slice(chars);
                    let whole = match end {
                        Some(_) => self.pending.len(),
                        None => self.pending.len() / QUANTUM_CHARS * QUANTUM_CHARS,
                    };
                    let quanta = self.pending.split_to(whole);
                    self.decrypt(&quanta, &mut out)?;
                    match end {
                        Some(_) => {
                            self.stage = Stage::Tag;
                            input = &rest[1..];
                        }
                        None => input = rest,
                    }
                }
                Stage::Tag => {
                    self.pending.extend_from_slice(input);
                    self.bounded()?;
                    input = &[];
                }
                Stage::Done => return Err(JweError::Malformed("bytes after the tag".into())),
                _ => {
                    let end = input.iter().position(|b| *b == b'.');
                    let (part, rest) = input.split_at(end.unwrap_or(input.len()));
                    self.pending.extend_from_slice(part);
                    self.bounded()?;
                    let Some(_) = end else { break };
                    input = &rest[1..];
                    let segment = self.pending.split();
                    self.segment(&segment)?;
                }
            }
        }
        Ok(out.freeze())
    }

    /// The end of the JWE: its tag checked; the last plaintext.
    pub fn finish(&mut self) -> Result<Bytes, JweError> {
        if !matches!(self.stage, Stage::Tag) {
            return Err(JweError::Malformed("it ends before its authentication tag".into()));
        }
        let text = std::str::from_utf8(&self.pending).map_err(|_| JweError::Tag)?.trim();
        let tag = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| JweError::Malformed("the tag is not base64url".into()))?;
        let crypter = self.crypter.as_mut().ok_or_else(|| JweError::Malformed("no content".into()))?;
        // GCM checks only as many tag bytes as it is given: anything but the full 16 is refused.
        if tag.len() != TAG_BYTES {
            return Err(JweError::Tag);
        }
        crypter.set_tag(&tag).map_err(|_| JweError::Tag)?;
        let mut out = vec![0; self.block];
        let n = crypter.finalize(&mut out).map_err(|_| JweError::Tag)?;
        out.truncate(n);
        self.stage = Stage::Done;
        Ok(Bytes::from(out))
    }

    fn bounded(&self) -> Result<(), JweError> {
        if self.pending.len() > MAX_SEGMENT_BYTES {
            return Err(JweError::Malformed(format!(
                "a header, IV or tag longer than {MAX_SEGMENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn segment(&mut self, segment: &[u8]) -> Result<(), JweError> {
        let decoded = || {
            URL_SAFE_NO_PAD
                .decode(segment)
                .map_err(|_| JweError::Malformed("a segment is not base64url".into()))
        };
        match self.stage {
            Stage::Header => {
                let header: Value = serde_json::from_slice(&decoded()?)
                    .map_err(|_| JweError::Malformed("the protected header is not JSON".into()))?;
                let text = |k: &str| header.get(k).and_then(Value::as_str).map(str::to_string);
                match text("alg").as_deref() {
                    Some("dir") => {}
                    Some(other) => return Err(JweError::Unsupported(format!("alg '{other}'"))),
                    None => return Err(JweError::Malformed("the protected header has no alg".into())),
                }
                if header.get("zip").is_some() {
                    return Err(JweError::Unsupported("compression ('zip')".into()));
                }
                // Extensions we would have to understand (RFC 7516 §4.1.13): none are.
                if header.get("crit").is_some() {
                    return Err(JweError::Unsupported("critical header extensions ('crit')".into()));
                }
                self.enc = text("enc")
                    .ok_or_else(|| JweError::Malformed("the protected header has no enc".into()))?;
                // The AAD is the header as sent (RFC 7516 §5.2 step 14).
                self.aad = segment.to_vec();
                self.stage = Stage::Key;
            }
            Stage::Key if segment.is_empty() => self.stage = Stage::Iv,
            Stage::Key => return Err(JweError::Malformed("alg 'dir' carries no encrypted key".into())),
            Stage::Iv => {
                let iv = decoded()?;
                if iv.len() != 12 {
                    return Err(JweError::Malformed(format!("the IV is {} bytes, not 12", iv.len())));
                }
                let cipher = self.key.cipher(&self.enc)?;
                let mut crypter = Crypter::new(cipher, Mode::Decrypt, &self.key.0, Some(&iv))?;
                crypter.aad_update(&self.aad)?;
                self.block = cipher.block_size();
                self.crypter = Some(crypter);
                self.stage = Stage::Ciphertext;
            }
            _ => {}
        }
        Ok(())
    }

    fn decrypt(&mut self, chars: &[u8], out: &mut BytesMut) -> Result<(), JweError> {
        if chars.is_empty() {
            return Ok(());
        }
        let cipher_bytes = URL_SAFE_NO_PAD
            .decode(chars)
            .map_err(|_| JweError::Malformed("the ciphertext is not base64url".into()))?;
        let crypter = self.crypter.as_mut().ok_or_else(|| JweError::Malformed("no IV".into()))?;
        let start = out.len();
        out.resize(start + cipher_bytes.len() + self.block, 0);
        let n = crypter.update(&cipher_bytes, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }
}

/// A whole JWE (a manifest, bounded by `MAX_MANIFEST_BYTES`) decrypted; leading whitespace is
/// skipped, and a body that is not a JWE is refused (the key says it must be one).
pub fn decrypt_all(key: &ContentKey, body: &[u8]) -> Result<Bytes, JweError> {
    let body = body.trim_ascii_start();
    if !looks_encrypted(body) {
        return Err(JweError::NotEncrypted);
    }
    let mut d = Decrypter::new(key.clone());
    let mut plain = BytesMut::from(&d.feed(body)?[..]);
    plain.extend_from_slice(&d.finish()?);
    Ok(plain.freeze())
}

/// A body stream that must be a JWE, decrypted as it arrives (leading whitespace skipped); a body
/// that is not one, or whose tag fails, ends it with an error.
pub struct Decrypted<S> {
    input: S,
    decrypter: Decrypter,
    /// Whether its first byte that is not whitespace has come (and was a JWE's).
    begun: bool,
    ended: bool,
}

impl<S> Decrypted<S> {
    pub fn new(input: S, key: ContentKey) -> Self {
        Self { input, decrypter: Decrypter::new(key), begun: false, ended: false }
    }
}

impl<S, E> Stream for Decrypted<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<JweError>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Bounded: each pass takes one input chunk; empty plaintext (a header chunk) goes on.
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.input).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(chunk))) => {
                    let chunk = if self.begun { &chunk[..] } else { chunk.trim_ascii_start() };
                    if chunk.is_empty() {
                        continue;
                    }
                    let fed = if !self.begun && !looks_encrypted(chunk) {
                        Err(JweError::NotEncrypted)
                    } else {
                        self.begun = true;
                        self.decrypter.feed(chunk)
                    };
                    match fed {
                        Ok(plain) if plain.is_empty() => continue,
                        Ok(plain) => return Poll::Ready(Some(Ok(plain))),
                        Err(e) => {
                            self.ended = true;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    let end = if self.begun { self.decrypter.finish() } else { Err(JweError::NotEncrypted) };
                    return Poll::Ready(match end {
                        Ok(last) if last.is_empty() => None,
                        Ok(last) => Some(Ok(last)),
                        Err(e) => Some(Err(e.into())),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jwe::{Dir, JweHeader};

    fn encrypt(key: &[u8], enc: &str, plain: &[u8]) -> String {
        let mut header = JweHeader::new();
        header.set_algorithm("dir");
        header.set_content_encryption(enc);
        let encrypter = Dir.encrypter_from_bytes(key).unwrap();
        josekit::jwe::serialize_compact(plain, &header, &encrypter).unwrap()
    }

    fn key_n(n: usize) -> (Vec<u8>, ContentKey) {
        let bytes: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
        let key = ContentKey::parse(&URL_SAFE_NO_PAD.encode(&bytes)).unwrap();
        (bytes, key)
    }

    #[test]
    fn decrypts_what_josekit_encrypts_fed_in_any_chunking() {
        let plain: Vec<u8> = (0..5000u32).flat_map(|i| format!("{{\"n\":{i}}}\n").into_bytes()).collect();
        for (n, enc) in [(16, "A128GCM"), (24, "A192GCM"), (32, "A256GCM")] {
            let (bytes, key) = key_n(n);
            let jwe = encrypt(&bytes, enc, &plain);
            for chunk in [1, 3, 7, 4096, jwe.len()] {
                let mut d = Decrypter::new(key.clone());
                let mut out = Vec::new();
                for c in jwe.as_bytes().chunks(chunk) {
                    out.extend_from_slice(&d.feed(c).unwrap());
                }
                out.extend_from_slice(&d.finish().unwrap());
                assert_eq!(out, plain, "{enc} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn an_altered_ciphertext_a_wrong_key_or_another_alg_is_refused() {
        let (bytes, key) = key_n(32);
        let jwe = encrypt(&bytes, "A256GCM", b"{\"resourceType\":\"Patient\"}\n");
        let mut parts: Vec<String> = jwe.split('.').map(str::to_string).collect();
        let mut ct = URL_SAFE_NO_PAD.decode(&parts[3]).unwrap();
        ct[0] ^= 1;
        parts[3] = URL_SAFE_NO_PAD.encode(ct);
        assert!(matches!(decrypt_all(&key, parts.join(".").as_bytes()), Err(JweError::Tag)));
        let (_, other) = key_of(&[9; 32]);
        assert!(matches!(decrypt_all(&other, jwe.as_bytes()), Err(JweError::Tag)));
        let (_, short) = key_n(16);
        assert!(matches!(decrypt_all(&short, jwe.as_bytes()), Err(JweError::KeySize { bits: 128, .. })));
        let rsa =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#), "a.b.c.d");
        let e = decrypt_all(&key, rsa.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("RSA-OAEP"), "{e}");
        assert!(decrypt_all(&key, &jwe.as_bytes()[..jwe.len() - 30]).is_err(), "cut short");
        // A tag cut to a few bytes is no tag: GCM would check only those.
        let short_tag = &jwe[..jwe.rfind('.').unwrap() + 5];
        assert!(matches!(decrypt_all(&key, short_tag.as_bytes()), Err(JweError::Tag)), "a 3-byte tag");
        assert!(matches!(decrypt_all(&key, b"{\"resourceType\":\"Patient\"}"), Err(JweError::NotEncrypted)));
        let spaced = format!("\n  {jwe}\n");
        assert!(decrypt_all(&key, spaced.as_bytes()).is_ok(), "whitespace around it");
    }

    fn key_of(bytes: &[u8]) -> (Vec<u8>, ContentKey) {
        (bytes.to_vec(), ContentKey::parse(&URL_SAFE_NO_PAD.encode(bytes)).unwrap())
    }

    #[test]
    fn keys_are_read_from_a_jwk_or_bytes_and_never_shown() {
        let jwk = r#"{"kty":"oct","k":"AAECAwQFBgcICQoLDA0ODw"}"#;
        let key = ContentKey::parse(jwk).unwrap();
        assert_eq!(key.encoded(), "AAECAwQFBgcICQoLDA0ODw");
        assert!(!format!("{key:?}").contains("AAEC"));
        assert!(ContentKey::parse(r#"{"kty":"RSA","n":"x"}"#).is_err());
        assert!(ContentKey::parse("AAEC").unwrap_err().contains("bits"));
        assert!(looks_encrypted(b"eyJhbGciOi") && !looks_encrypted(b" {\"a\":1}"));
    }
}

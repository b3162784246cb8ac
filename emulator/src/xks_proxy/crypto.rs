//! AES-256-GCM as an external key manager would do it for the XKS API.
//!
//! The AAD given to GCM follows the spec's guidance (Encrypt,
//! `ciphertextMetadata`): `u16 BE len(aad) || aad || u8 len(metadata) ||
//! metadata`, so a caller cannot move bytes between the two fields and still
//! decrypt.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{Aes256Gcm, AesGcm};

/// GCM with the 16-byte IV the spec also allows on decrypt.
type Aes256Gcm16 = AesGcm<Aes256, U16>;

pub(super) const KEY_LEN: usize = 32;
pub(super) const IV_LEN: usize = 12;
pub(super) const TAG_LEN: usize = 16;
/// Spec limits: AAD up to 8192 bytes must be handled, metadata is at most 20.
pub(super) const MAX_AAD_LEN: usize = u16::MAX as usize;
pub(super) const MAX_METADATA_LEN: usize = 20;

pub(super) struct Sealed {
    pub ciphertext: Vec<u8>,
    pub iv: [u8; IV_LEN],
    pub tag: [u8; TAG_LEN],
}

/// The AAD actually fed to GCM; `None` when a length does not fit its prefix.
pub(super) fn gcm_aad(aad: &[u8], metadata: &[u8]) -> Option<Vec<u8>> {
    let aad_len = u16::try_from(aad.len()).ok()?;
    if metadata.len() > MAX_METADATA_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(metadata.len() as u8);
    out.extend_from_slice(metadata);
    Some(out)
}

/// Encrypts with a fresh random 96-bit IV.
pub(super) fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], gcm_aad: &[u8]) -> Option<Sealed> {
    let iv: [u8; IV_LEN] = rand::random();
    let cipher = Aes256Gcm::new(GenericArray::from_slice(key));
    let mut buffer = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(&iv), gcm_aad, &mut buffer)
        .ok()?;
    let mut tag_bytes = [0u8; TAG_LEN];
    tag_bytes.copy_from_slice(&tag);
    Some(Sealed {
        ciphertext: buffer,
        iv,
        tag: tag_bytes,
    })
}

/// Decrypts; `None` when the IV or tag has the wrong size or authentication fails.
pub(super) fn open(
    key: &[u8; KEY_LEN],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    gcm_aad: &[u8],
) -> Option<Vec<u8>> {
    if tag.len() != TAG_LEN {
        return None;
    }
    let mut buffer = ciphertext.to_vec();
    let tag = GenericArray::from_slice(tag);
    let result = match iv.len() {
        IV_LEN => Aes256Gcm::new(GenericArray::from_slice(key)).decrypt_in_place_detached(
            GenericArray::from_slice(iv),
            gcm_aad,
            &mut buffer,
            tag,
        ),
        16 => Aes256Gcm16::new(GenericArray::from_slice(key)).decrypt_in_place_detached(
            GenericArray::from_slice(iv),
            gcm_aad,
            &mut buffer,
            tag,
        ),
        _ => return None,
    };
    result.ok().map(|()| buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = [7u8; KEY_LEN];
        let aad = gcm_aad(b"ctx", b"").unwrap();
        let sealed = seal(&key, b"hello", &aad).unwrap();
        assert_eq!(
            open(&key, &sealed.iv, &sealed.ciphertext, &sealed.tag, &aad).unwrap(),
            b"hello"
        );
        let other = gcm_aad(b"ctX", b"").unwrap();
        assert!(open(&key, &sealed.iv, &sealed.ciphertext, &sealed.tag, &other).is_none());
        let mut tag = sealed.tag;
        tag[0] ^= 1;
        assert!(open(&key, &sealed.iv, &sealed.ciphertext, &tag, &aad).is_none());
    }

    #[test]
    fn aad_and_metadata_cannot_trade_bytes() {
        // "ab" as AAD with no metadata must differ from "a" + metadata "b".
        assert_ne!(gcm_aad(b"ab", b""), gcm_aad(b"a", b"b"));
        assert!(gcm_aad(b"", &[0u8; 21]).is_none());
    }
}

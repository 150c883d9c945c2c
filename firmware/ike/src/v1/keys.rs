//! The IKEv1 key schedule with pre-shared keys (RFC 2409 §5, §5.5, Appendix B).
//!
//! The PRF is the HMAC of the negotiated hash algorithm ([`Prf`], shared with IKEv2's
//! [`crate::crypto::prf`]); the IVs use the bare hash. Every secret is returned in a [`Zeroizing`]
//! buffer.

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use crate::crypto::prf;
use crate::proposal::Prf;

/// The hash of a phase-1 hash algorithm (RFC 2409 Appendix B's "hash" for IVs).
pub fn hash(f: Prf, data: &[&[u8]]) -> Vec<u8> {
    fn h<D: Digest>(data: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        data.iter().for_each(|x| d.update(x));
        d.finalize().to_vec()
    }
    match f {
        Prf::HmacSha1 => h::<Sha1>(data),
        Prf::HmacSha256 => h::<Sha256>(data),
        Prf::HmacSha384 => h::<Sha384>(data),
        Prf::HmacSha512 => h::<Sha512>(data),
    }
}

/// The keying material of an ISAKMP SA (RFC 2409 §5).
pub struct Phase1Keys {
    /// SKEYID = prf(pre-shared-key, Ni_b | Nr_b) (§5, pre-shared keys).
    pub skeyid: Zeroizing<Vec<u8>>,
    /// SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0): keys phase 2.
    pub skeyid_d: Zeroizing<Vec<u8>>,
    /// SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1): authenticates.
    pub skeyid_a: Zeroizing<Vec<u8>>,
    /// SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2).
    pub skeyid_e: Zeroizing<Vec<u8>>,
    /// The encryption key: SKEYID_e, expanded as Appendix B says when it is too short.
    pub enc_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Phase1Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Phase1Keys(<redacted>)")
    }
}

/// Derives the phase-1 keys from the PSK, the nonces, the DH secret and the cookies, with an
/// encryption key of `key_len` bytes.
#[allow(clippy::too_many_arguments)] // the inputs RFC 2409 §5 names, in its order
pub fn phase1(
    f: Prf,
    psk: &[u8],
    ni: &[u8],
    nr: &[u8],
    gxy: &[u8],
    cky_i: u64,
    cky_r: u64,
    key_len: usize,
) -> Phase1Keys {
    let (ci, cr) = (cky_i.to_be_bytes(), cky_r.to_be_bytes());
    let skeyid = Zeroizing::new(prf(f, psk, &[ni, nr]));
    let skeyid_d = Zeroizing::new(prf(f, &skeyid, &[gxy, &ci, &cr, &[0]]));
    let skeyid_a = Zeroizing::new(prf(f, &skeyid, &[&skeyid_d, gxy, &ci, &cr, &[1]]));
    let skeyid_e = Zeroizing::new(prf(f, &skeyid, &[&skeyid_a, gxy, &ci, &cr, &[2]]));
    let enc_key = expand(f, &skeyid_e, key_len);
    Phase1Keys { skeyid, skeyid_d, skeyid_a, skeyid_e, enc_key }
}

/// The encryption key from SKEYID_e (Appendix B): its first bytes when it is long enough,
/// else K1 | K2 | ... with K1 = prf(SKEYID_e, 0) and Kn = prf(SKEYID_e, Kn-1), truncated.
pub fn expand(f: Prf, skeyid_e: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    if skeyid_e.len() >= len {
        return Zeroizing::new(skeyid_e[..len].to_vec());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + f.output_len()));
    let mut k = Zeroizing::new(prf(f, skeyid_e, &[&[0]]));
    while out.len() < len {
        out.extend_from_slice(&k);
        k = Zeroizing::new(prf(f, skeyid_e, &[&k]));
    }
    out.truncate(len);
    out
}

/// The IV of the first encrypted phase-1 message: hash(g^xi | g^xr), truncated to the block
/// (Appendix B). Later messages chain from the previous ciphertext's last block.
pub fn phase1_iv(f: Prf, gxi: &[u8], gxr: &[u8], block: usize) -> Vec<u8> {
    let mut iv = hash(f, &[gxi, gxr]);
    iv.truncate(block);
    iv
}

/// The IV of a phase-2 or informational exchange: hash(last phase-1 CBC block | M-ID),
/// truncated to the block (Appendix B).
pub fn phase2_iv(f: Prf, last_block: &[u8], message_id: u32, block: usize) -> Vec<u8> {
    let mut iv = hash(f, &[last_block, &message_id.to_be_bytes()]);
    iv.truncate(block);
    iv
}

/// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) (§5).
pub fn hash_i(
    f: Prf,
    k: &Phase1Keys,
    gxi: &[u8],
    gxr: &[u8],
    cky: (u64, u64),
    sai_b: &[u8],
    idii_b: &[u8],
) -> Vec<u8> {
    phase1_hash(f, k, [gxi, gxr], [cky.0, cky.1], sai_b, idii_b)
}

/// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b) (§5): HASH_I with the
/// key shares and cookies the other way round.
pub fn hash_r(
    f: Prf,
    k: &Phase1Keys,
    gxi: &[u8],
    gxr: &[u8],
    cky: (u64, u64),
    sai_b: &[u8],
    idir_b: &[u8],
) -> Vec<u8> {
    phase1_hash(f, k, [gxr, gxi], [cky.1, cky.0], sai_b, idir_b)
}

fn phase1_hash(
    f: Prf,
    k: &Phase1Keys,
    shares: [&[u8]; 2],
    cookies: [u64; 2],
    sai_b: &[u8],
    id_b: &[u8],
) -> Vec<u8> {
    let (c1, c2) = (cookies[0].to_be_bytes(), cookies[1].to_be_bytes());
    prf(f, &k.skeyid, &[shares[0], shares[1], &c1, &c2, sai_b, id_b])
}

/// Quick Mode HASH(1) = prf(SKEYID_a, M-ID | the payloads after HASH) (§5.5), also the HASH of
/// informational exchanges (§5.7).
pub fn qm_hash1(f: Prf, k: &Phase1Keys, message_id: u32, rest: &[u8]) -> Vec<u8> {
    prf(f, &k.skeyid_a, &[&message_id.to_be_bytes(), rest])
}

/// Quick Mode HASH(2) = prf(SKEYID_a, M-ID | Ni_b | the payloads after HASH) (§5.5).
pub fn qm_hash2(f: Prf, k: &Phase1Keys, message_id: u32, ni_b: &[u8], rest: &[u8]) -> Vec<u8> {
    prf(f, &k.skeyid_a, &[&message_id.to_be_bytes(), ni_b, rest])
}

/// Quick Mode HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b) (§5.5).
pub fn qm_hash3(f: Prf, k: &Phase1Keys, message_id: u32, ni_b: &[u8], nr_b: &[u8]) -> Vec<u8> {
    prf(f, &k.skeyid_a, &[&[0], &message_id.to_be_bytes(), ni_b, nr_b])
}

/// KEYMAT of one direction of a phase-2 SA, `len` bytes (§5.5): K1 = prf(SKEYID_d, [g(qm)^xy |]
/// protocol | SPI | Ni_b | Nr_b), Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b |
/// Nr_b). The SPI is the one of the receiving side's inbound SA.
#[allow(clippy::too_many_arguments)] // the inputs §5.5 names, in its order
pub fn keymat(
    f: Prf,
    k: &Phase1Keys,
    pfs: Option<&[u8]>,
    protocol: u8,
    spi: u32,
    ni_b: &[u8],
    nr_b: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let g = pfs.unwrap_or(&[]);
    let spi = spi.to_be_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(len + f.output_len()));
    let mut prev = Zeroizing::new(Vec::new());
    while out.len() < len {
        prev = Zeroizing::new(prf(f, &k.skeyid_d, &[&prev, g, &[protocol], &spi, ni_b, nr_b]));
        out.extend_from_slice(&prev);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn h(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // The expected values come from Python's hmac and hashlib, an implementation independent
    // of this crate, computing RFC 2409's formulas on these inputs.
    const PSK: &[u8] = b"isthmus-ikev1-kat";
    const NI: [u8; 16] = [0x11; 16];
    const NR: [u8; 16] = [0x22; 16];
    const GXY: [u8; 32] = [0x33; 32];
    const CKY_I: u64 = 0x0102030405060708;
    const CKY_R: u64 = 0x1112131415161718;

    #[test]
    fn rfc2409_section_5_key_schedule_sha1_with_appendix_b_expansion() {
        // AES-256 needs 32 bytes: SKEYID_e from HMAC-SHA1 has 20, so Appendix B expands it.
        let k = phase1(Prf::HmacSha1, PSK, &NI, &NR, &GXY, CKY_I, CKY_R, 32);
        assert_eq!(h(&k.skeyid), "adbc5c15a27a95ab900d4314965ea18ee59e33e5");
        assert_eq!(h(&k.skeyid_d), "6748555480ffe409333712a92d4b898510ab1f03");
        assert_eq!(h(&k.skeyid_a), "984e7faebeac25070d0cd4580a410cbf0ef55333");
        assert_eq!(h(&k.skeyid_e), "38ab6f8b4b5b17b7fcf853e69aac5a09fcfeba71");
        assert_eq!(
            h(&k.enc_key),
            "76de3793c547916ba639a6e347ac5a8c494ccf39a8350c3a21adece4ecf39c08"
        );
    }

    #[test]
    fn rfc2409_section_5_key_schedule_sha256_and_the_hashes() {
        let f = Prf::HmacSha256;
        let k = phase1(f, PSK, &NI, &NR, &GXY, CKY_I, CKY_R, 16);
        assert_eq!(
            h(&k.skeyid),
            "8977e78478c46f6c4fd13a87fc8236a12011f3f53382151255bdc2c424a5ed55"
        );
        assert_eq!(h(&k.enc_key), h(&k.skeyid_e[..16]), "long enough: no expansion");
        let (gxi, gxr) = ([0x44u8; 8], [0x55u8; 8]);
        let (sa, idi, idr) =
            (hex("0000000100000001"), hex("01000000c0000201"), hex("01000000c6336414"));
        assert_eq!(
            h(&hash_i(f, &k, &gxi, &gxr, (CKY_I, CKY_R), &sa, &idi)),
            "b2e71f8f38992a34365140776e3b366981c4ab983c606a6908353fa417e672eb"
        );
        assert_eq!(
            h(&hash_r(f, &k, &gxi, &gxr, (CKY_I, CKY_R), &sa, &idr)),
            "9a1fe8372a3f3ede5a0fcaf6ab299994ae79ce0a92d266103a7db1c8c47ee880"
        );
        assert_eq!(h(&phase1_iv(f, &gxi, &gxr, 16)), "bc30851e04ec2bae46e9a09d8d4fec64");
        assert_eq!(
            h(&phase2_iv(f, &[0x66; 16], 0xdeadbeef, 16)),
            "c1642c2b894ee77cfb6b5672e9d13bb4"
        );
        let mid = 0x0a0b0c0d;
        assert_eq!(
            h(&qm_hash1(f, &k, mid, b"rest")),
            "508f4814dcbc5f07639b4b28b354c89bc9bb6c8b8b2b7a530b499f71e6a5ef19"
        );
        assert_eq!(
            h(&qm_hash2(f, &k, mid, &NI, b"rest")),
            "799ca45abeecf69381eb5befea3e4a36f96d3de46c2c57a32d25e89095570fd0"
        );
        assert_eq!(
            h(&qm_hash3(f, &k, mid, &NI, &NR)),
            "810aab5dfa4cbc69d45842e7cabe1325d81ed8461afdd3306d70c1040703ee5b"
        );
        // ESP with AES-256-CBC and HMAC-SHA2-256: 32 + 32 bytes, two and a bit PRF outputs.
        let km = keymat(f, &k, None, 3, 0xc0ffee01, &NI, &NR, 64);
        assert_eq!(
            h(&km),
            "5eab03069b6144b2b9a4134f9fc08b463c6f68def621e0d6ba3bf676d214db75a5e6869f5cb8d8257c2164e66eaca517a7e148f86926274351f5201e64766969"
        );
        let pfs = keymat(f, &k, Some(&[0x77; 16]), 3, 0xc0ffee01, &NI, &NR, 40);
        assert_eq!(
            h(&pfs),
            "74082d137e4d7feec4ca8629d20492062e9e270aa144c399ab5303839d9496b49de4a4da5f8c4722"
        );
    }
}

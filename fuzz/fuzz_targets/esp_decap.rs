//! Inbound ESP decapsulation on untrusted bytes must never panic, and must only ever return a
//! packet that the sender sealed.
//!
//! The first byte picks the mode and SA options, the second the transform (AES-GCM,
//! ChaCha20-Poly1305, AES-CBC or 3DES-CBC with each HMAC):
//! - raw mode: the rest goes straight to `decapsulate` and `decapsulate_in_place` (length,
//!   alignment, SPI, replay and ICV checks), for every transform;
//! - sealed mode (the AEADs): the rest is a sequence number and a plaintext (payload, padding
//!   and trailer, any bytes) sealed with the SA's own key, so the fuzzer reaches what lies behind
//!   the ICV: padding, next header and inner-packet checks, the replay window and ESN inference.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use isthmus_esp::{
    Aead, AeadBackend, Backend, CbcCipher, Cipher, InboundSa, Integ, Lifetime, SaConfig, Transform,
};
use libfuzzer_sys::fuzz_target;

const SPI: u32 = 0x0000_1234;

const TRANSFORMS: [Transform; 8] = [
    Transform::Aead(Aead::Aes128Gcm16),
    Transform::Aead(Aead::Aes256Gcm16),
    Transform::Aead(Aead::ChaCha20Poly1305),
    Transform::Cbc(CbcCipher::Aes128, Integ::HmacSha256_128),
    Transform::Cbc(CbcCipher::Aes192, Integ::HmacSha384_192),
    Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha512_256),
    Transform::Cbc(CbcCipher::Aes256, Integ::HmacSha1_96),
    Transform::Cbc(CbcCipher::TripleDes, Integ::HmacSha1_96),
];

fn key(t: Transform) -> Vec<u8> {
    (0..t.key_material_len() as u8).collect()
}

fn config(t: Transform, esn: bool, backend: Backend, window: u32) -> SaConfig {
    SaConfig {
        spi: SPI,
        transform: t,
        backend,
        key: key(t),
        esn,
        replay_window: window,
        lifetime: Lifetime::default(),
    }
}

fn epoch() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    let [sel, which, rest @ ..] = data else { return };
    let (sel, t) = (*sel, TRANSFORMS[usize::from(*which) % TRANSFORMS.len()]);
    let esn = sel & 1 != 0;
    let backend = if sel & 2 != 0 { Backend::RustCrypto } else { Backend::Ring };
    let window = [0, 32, 64, 4096][usize::from(sel >> 2 & 3)];
    let now = epoch();
    let sa = InboundSa::new(config(t, esn, backend, window), now).expect("valid config");
    let mut out = vec![0u8; 2048];
    let Transform::Aead(aead) = t else {
        let _ = sa.decapsulate(rest, &mut out, now);
        let mut copy = rest.to_vec();
        let _ = sa.decapsulate_in_place(&mut copy, now);
        return;
    };
    if sel & 0x10 == 0 {
        // Raw mode.
        let _ = sa.decapsulate(rest, &mut out, now);
        let mut copy = rest.to_vec();
        let _ = sa.decapsulate_in_place(&mut copy, now);
        return;
    }
    // Sealed mode: [seq: 8][iv: 8][plaintext...], possibly several packets split by length
    // bytes so the window sees sequences.
    let mut input = rest;
    let k = key(t);
    let cipher = Cipher::new(aead, backend, &k[..aead.key_len()]).expect("key");
    while input.len() >= 17 {
        let seq = u64::from_be_bytes(input[..8].try_into().expect("8 bytes"));
        let iv: [u8; 8] = input[8..16].try_into().expect("8 bytes");
        let len = usize::from(input[16]).min(input.len() - 17);
        let plain = &input[17..17 + len];
        input = &input[17 + len..];
        let mut pkt = Vec::with_capacity(16 + len + 16);
        pkt.extend(SPI.to_be_bytes());
        pkt.extend((seq as u32).to_be_bytes());
        pkt.extend(iv);
        let mut body = plain.to_vec();
        body.extend([0u8; 16]);
        let mut aad = SPI.to_be_bytes().to_vec();
        if esn {
            aad.extend(((seq >> 32) as u32).to_be_bytes());
        }
        aad.extend((seq as u32).to_be_bytes());
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&k[aead.key_len()..]);
        nonce[4..].copy_from_slice(&iv);
        cipher.seal_in_place(&nonce, &aad, &mut body).expect("seal");
        pkt.extend(&body);
        if let Ok(d) = sa.decapsulate(&pkt, &mut out, now) {
            // Whatever comes out was sealed by us, at the claimed sequence number.
            assert_eq!(&out[..d.len], &plain[..d.len]);
            // Without ESN only the low half is on the wire and in the ICV.
            assert_eq!(d.seq, if esn { seq } else { seq & 0xffff_ffff });
            let pad = usize::from(plain[len - 2]);
            assert_eq!(d.len + pad + 2, len);
            assert!(matches!(d.next_header, 4 | 41 | 59));
            // And, with anti-replay on, it is never accepted twice.
            if window != 0 {
                assert!(sa.decapsulate(&pkt, &mut out, now).is_err());
            }
        }
    }
    let c = sa.counters();
    assert!(c.packets <= c.packets + c.drops.total());
});

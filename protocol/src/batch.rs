//! Ed25519 batch verification for many signatures under few keys (an evidence chain has one).
//!
//! This is ed25519-dalek's `verify_batch` equation, unchanged, with its terms regrouped: for
//! signatures `(R_i, s_i)` on messages `M_i` under keys `A_i`, with `h_i = SHA-512(R_i ‖ A_i ‖
//! M_i)` and 128-bit coefficients `z_i`, the batch holds when
//!
//! ```text
//! -(Σ z_i·s_i)·B + Σ z_i·R_i + Σ z_i·h_i·A_i = 0        (cofactorless, as dalek's)
//! ```
//!
//! dalek multiplies every `A_i` separately; here the `A` terms of one key are summed into one
//! scalar first (`Σ_{i: A_i = A} z_i·h_i`), which is the same sum, so a batch holds here exactly
//! when it holds there for the same `z_i`. A chain signed by one key then costs `n + 2` points in
//! the multiscalar multiplication instead of `2n + 1` (ed25519-zebra groups keys the same way).
//!
//! The checks dalek makes on each signature before the equation are kept: `s` is canonical
//! (`s < ℓ`), `R` decompresses. The `z_i` are derived, as in ed25519-dalek 3, from a hash of every
//! `h_i` (which binds `R_i`, `A_i` and `M_i`) and every `s_i`, so none is known before all
//! signatures are fixed; no randomness source is needed and this crate stays free of I/O.
//!
//! The answer is for the whole batch. A batch that fails says nothing about which signature is
//! bad: callers verify its signatures one by one to name it (`evidence::open_many`).

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// Domain of the hash the coefficients come from.
const COEFFICIENTS_DOMAIN: &[u8] = b"msp-compliance ed25519 batch coefficients v1";

/// One signature to check: `key` indexes the keys passed to [`verify`].
pub(crate) struct Item<'a> {
    pub message: &'a [u8],
    pub signature: &'a Signature,
    pub key: usize,
}

/// Whether every signature in `items` is valid under its key (see the module docs); `true` for
/// no items. An item whose `key` is out of range makes the batch fail.
pub(crate) fn verify(items: &[Item<'_>], keys: &[VerifyingKey]) -> bool {
    let n = items.len();
    let mut transcript = Sha512::new_with_prefix(COEFFICIENTS_DOMAIN);
    let mut hrams = Vec::with_capacity(n);
    let mut ss = Vec::with_capacity(n);
    let mut rs = Vec::with_capacity(n);
    for item in items {
        let Some(key) = keys.get(item.key) else {
            return false;
        };
        let Some(s) =
            Option::<Scalar>::from(Scalar::from_canonical_bytes(*item.signature.s_bytes()))
        else {
            return false;
        };
        let Some(r) = CompressedEdwardsY(*item.signature.r_bytes()).decompress() else {
            return false;
        };
        let hram: [u8; 64] = Sha512::new()
            .chain_update(item.signature.r_bytes())
            .chain_update(key.as_bytes())
            .chain_update(item.message)
            .finalize()
            .into();
        transcript.update(hram);
        transcript.update(item.signature.s_bytes());
        hrams.push(Scalar::from_bytes_mod_order_wide(&hram));
        ss.push(s);
        rs.push(r);
    }
    let seed = transcript.finalize();

    // Four 128-bit coefficients per SHA-512 output.
    let mut zs = Vec::with_capacity(n);
    for block in 0..n.div_ceil(4) {
        let wide: [u8; 64] = Sha512::new()
            .chain_update(seed)
            .chain_update((block as u64).to_le_bytes())
            .finalize()
            .into();
        for z in wide.chunks_exact(16).take(n - zs.len()) {
            let z: [u8; 16] = z.try_into().expect("chunks of 16");
            zs.push(Scalar::from(u128::from_le_bytes(z)));
        }
    }

    let mut b_coefficient = Scalar::ZERO;
    let mut key_coefficients = vec![None::<Scalar>; keys.len()];
    for ((item, z), (s, hram)) in items.iter().zip(&zs).zip(ss.iter().zip(&hrams)) {
        b_coefficient += z * s;
        *key_coefficients[item.key].get_or_insert(Scalar::ZERO) += z * hram;
    }
    let (key_scalars, key_points): (Vec<Scalar>, Vec<EdwardsPoint>) = key_coefficients
        .iter()
        .zip(keys)
        .filter_map(|(coefficient, key)| coefficient.map(|it| (it, key.to_edwards())))
        .unzip();

    EdwardsPoint::vartime_multiscalar_mul(
        std::iter::once(-b_coefficient).chain(zs).chain(key_scalars),
        std::iter::once(ED25519_BASEPOINT_POINT)
            .chain(rs)
            .chain(key_points),
    )
    .is_identity()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    use super::*;

    fn signed(n: usize, keys: &[SigningKey]) -> Vec<(Vec<u8>, Signature, usize)> {
        (0..n)
            .map(|i| {
                let key = i % keys.len();
                let message = format!("record {i}").repeat(i % 7 + 1).into_bytes();
                let signature = keys[key].sign(&message);
                (message, signature, key)
            })
            .collect()
    }

    fn batch(signed: &[(Vec<u8>, Signature, usize)], keys: &[SigningKey]) -> (bool, bool, bool) {
        let public: Vec<VerifyingKey> = keys.iter().map(SigningKey::verifying_key).collect();
        let items: Vec<Item<'_>> = signed
            .iter()
            .map(|(message, signature, key)| Item {
                message,
                signature,
                key: *key,
            })
            .collect();
        let ours = verify(&items, &public);
        let messages: Vec<&[u8]> = signed.iter().map(|it| it.0.as_slice()).collect();
        let signatures: Vec<Signature> = signed.iter().map(|it| it.1).collect();
        let per_item_keys: Vec<VerifyingKey> = signed.iter().map(|it| public[it.2]).collect();
        let dalek = ed25519_dalek::verify_batch(&messages, &signatures, &per_item_keys).is_ok();
        let singly = signed
            .iter()
            .all(|(message, signature, key)| public[*key].verify(message, signature).is_ok());
        (ours, dalek, singly)
    }

    fn keys(n: u8) -> Vec<SigningKey> {
        (1..=n)
            .map(|it| SigningKey::from_bytes(&[it; 32]))
            .collect()
    }

    #[test]
    fn valid_batches_hold_for_one_key_and_for_several() {
        for (n, k) in [(0, 1), (1, 1), (2, 1), (5, 1), (300, 1), (7, 3), (260, 4)] {
            let keys = keys(k);
            assert_eq!(
                batch(&signed(n, &keys), &keys),
                (true, true, true),
                "{n}/{k}"
            );
        }
    }

    #[test]
    fn any_one_bad_signature_fails_the_batch() {
        let keys = keys(2);
        let good = signed(40, &keys);
        for victim in [0, 1, 17, 39] {
            // A changed message, a flipped bit in R or in s, another key's signature, the
            // signature of another record.
            let mut changes: Vec<Vec<(Vec<u8>, Signature, usize)>> = Vec::new();
            let mut it = good.clone();
            it[victim].0.push(b'!');
            changes.push(it);
            for byte in [0, 5, 31, 32, 40, 63] {
                let mut it = good.clone();
                let mut bytes = it[victim].1.to_bytes();
                bytes[byte] ^= 0x04;
                it[victim].1 = Signature::from_bytes(&bytes);
                changes.push(it);
            }
            let mut it = good.clone();
            it[victim].2 = 1 - it[victim].2;
            changes.push(it);
            let mut it = good.clone();
            it[victim].1 = good[(victim + 2) % good.len()].1;
            changes.push(it);
            for (n, changed) in changes.iter().enumerate() {
                let (ours, _, singly) = batch(changed, &keys);
                assert!(!singly, "change {n} of {victim} is invalid on its own");
                assert!(!ours, "change {n} of {victim} fails the batch");
            }
        }
    }

    #[test]
    fn a_non_canonical_s_is_refused_as_dalek_refuses_it() {
        let keys = keys(1);
        let mut items = signed(3, &keys);
        // s + ℓ: the same point equation, a different encoding.
        let mut bytes = items[1].1.to_bytes();
        let s = Scalar::from_canonical_bytes(bytes[32..].try_into().unwrap()).unwrap();
        let ell_minus_one = -Scalar::ONE;
        let plus_ell = add_le(s.as_bytes(), &add_le(ell_minus_one.as_bytes(), &one()));
        bytes[32..].copy_from_slice(&plus_ell);
        items[1].1 = Signature::from_bytes(&bytes);
        assert_eq!(batch(&items, &keys), (false, false, false));
    }

    #[test]
    fn an_out_of_range_key_fails_the_batch() {
        let keys = keys(1);
        let items = signed(2, &keys);
        let public = [keys[0].verifying_key()];
        let items: Vec<Item<'_>> = items
            .iter()
            .map(|(message, signature, _)| Item {
                message,
                signature,
                key: 1,
            })
            .collect();
        assert!(!verify(&items, &public));
    }

    fn one() -> [u8; 32] {
        let mut it = [0u8; 32];
        it[0] = 1;
        it
    }

    /// Little-endian 256-bit addition (no overflow for the values used).
    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }
}

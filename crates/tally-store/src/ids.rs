//! Prefixed, opaque, time-ordered ids: `cust_01jd…`. The prefix names the kind of thing; the
//! rest is 48 bits of milliseconds and 80 random bits in Crockford base32 (a ULID), so ids
//! sort by creation and never collide in practice, across servers too.

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

pub fn new_id(prefix: &str) -> String {
    let millis = chrono::Utc::now().timestamp_millis() as u128;
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut value: u128 = millis << 80;
    for (index, byte) in random.iter().enumerate() {
        value |= (*byte as u128) << (8 * (9 - index));
    }
    let mut text = String::with_capacity(prefix.len() + 1 + 26);
    text.push_str(prefix);
    text.push('_');
    for position in (0..26).rev() {
        text.push(ALPHABET[((value >> (position * 5)) & 31) as usize] as char);
    }
    text
}

/// A random secret of `bytes` bytes, hex encoded.
pub fn new_secret(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_ordered() {
        let first = new_id("cust");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id("cust");
        assert!(first.starts_with("cust_") && first.len() == 31);
        assert!(first < second);
    }
}

//! GPT-2's byte-level alphabet: every byte written as one printable character, so that byte
//! strings can be vocabulary keys in `tokenizer.json`.
//!
//! The printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, NBSP,
//! soft hyphen, ...) are written as U+0100, U+0101, ... in byte order, so a space is `Ġ` and a
//! newline `Ċ`.

/// How many bytes are not printable and so are written as U+0100 + n.
const REMAPPED_COUNT: usize = 68;

/// First code point used for a remapped byte.
const REMAPPED_BASE: u32 = 0x100;

/// Whether GPT-2 writes `byte` as the Latin-1 character of the same value.
const fn maps_to_itself(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The remapped bytes in order: the n-th is written as U+0100 + n.
const REMAPPED: [u8; REMAPPED_COUNT] = {
    let mut table = [0u8; REMAPPED_COUNT];
    let mut next = 0;
    let mut byte = 0u8;
    loop {
        if !maps_to_itself(byte) {
            table[next] = byte;
            next += 1;
        }
        if byte == u8::MAX {
            break;
        }
        byte += 1;
    }
    table
};

/// The character that stands for each byte.
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut n = 0;
    while n < REMAPPED_COUNT {
        table[REMAPPED[n] as usize] = match char::from_u32(REMAPPED_BASE + n as u32) {
            Some(c) => c,
            None => panic!("U+0100..U+0143 are valid characters"),
        };
        n += 1;
    }
    let mut byte = 0usize;
    while byte < 256 {
        if maps_to_itself(byte as u8) {
            table[byte] = byte as u8 as char;
        }
        byte += 1;
    }
    table
};

/// The byte a character of the alphabet stands for, or `None` if it is not in the alphabet.
fn char_to_byte(c: char) -> Option<u8> {
    let code = u32::from(c);
    match u8::try_from(code) {
        Ok(byte) if maps_to_itself(byte) => Some(byte),
        _ => {
            let index = usize::try_from(code.checked_sub(REMAPPED_BASE)?).ok()?;
            REMAPPED.get(index).copied()
        }
    }
}

/// Writes a byte string as a vocabulary key (`b" the"` → `"Ġthe"`).
pub(crate) fn bytes_to_token(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| BYTE_TO_CHAR[usize::from(byte)])
        .collect()
}

/// The bytes a token string stands for, exactly as the `ByteLevel` decoder of `tokenizers` reads
/// it: if every character is in the alphabet, the bytes they stand for; otherwise (added tokens
/// written in plain text) the token's own UTF-8.
pub(crate) fn token_to_bytes(token: &str) -> Vec<u8> {
    token
        .chars()
        .map(char_to_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=u8::MAX).collect();
        let token = bytes_to_token(&all);
        assert_eq!(token.chars().count(), 256);
        assert_eq!(token_to_bytes(&token), all);
    }

    #[test]
    fn writes_space_and_newline_like_gpt2() {
        assert_eq!(bytes_to_token(b" the\n"), "Ġthe\u{10a}");
        assert_eq!(bytes_to_token(&[0xAD]), "\u{143}");
    }

    #[test]
    fn reads_plain_added_tokens_as_their_utf8() {
        assert_eq!(token_to_bytes("<think>"), b"<think>");
        assert_eq!(token_to_bytes("日本"), "日本".as_bytes());
    }
}

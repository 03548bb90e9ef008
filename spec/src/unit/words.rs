//! Words in unit values: systemd's quoting, split and joined (see the
//! module doc of `spec::unit`).

use std::borrow::Cow;

/// Why a line could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("unterminated quote")]
    Unterminated,
    #[error("a closing quote must end the word")]
    AfterQuote,
    #[error("a quote inside a word: quote the whole word")]
    InWord,
    #[error("a backslash at the end of the value")]
    TrailingBackslash,
    #[error("unknown escape \\{0}")]
    BadEscape(char),
    #[error("a NUL character")]
    Nul,
    #[error("escapes make invalid UTF-8")]
    Utf8,
}

/// Splits a value into words with systemd's quoting (see the module doc).
pub fn split_words(s: &str) -> Result<Vec<String>, QuoteError> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|&c| is_space(c)).is_some() {}
        let Some(&first) = chars.peek() else { break };
        let mut buf = Vec::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                match chars.next().ok_or(QuoteError::Unterminated)? {
                    c if c == first => break,
                    '\\' => unescape(&mut chars, &mut buf)?,
                    c => push_char(&mut buf, c)?,
                }
            }
            if chars.peek().is_some_and(|&c| !is_space(c)) {
                return Err(QuoteError::AfterQuote);
            }
        } else {
            while let Some(c) = chars.next_if(|&c| !is_space(c)) {
                match c {
                    '"' | '\'' => return Err(QuoteError::InWord),
                    '\\' => unescape(&mut chars, &mut buf)?,
                    c => push_char(&mut buf, c)?,
                }
            }
        }
        words.push(String::from_utf8(buf).map_err(|_| QuoteError::Utf8)?);
    }
    Ok(words)
}

fn push_char(buf: &mut Vec<u8>, c: char) -> Result<(), QuoteError> {
    if c == '\0' {
        return Err(QuoteError::Nul);
    }
    buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    Ok(())
}

fn unescape(chars: &mut impl Iterator<Item = char>, buf: &mut Vec<u8>) -> Result<(), QuoteError> {
    let c = chars.next().ok_or(QuoteError::TrailingBackslash)?;
    let byte = match c {
        'a' => 7,
        'b' => 8,
        'f' => 12,
        'n' => b'\n',
        'r' => b'\r',
        't' => b'\t',
        'v' => 11,
        's' => b' ',
        '\\' | '"' | '\'' => return push_char(buf, c),
        'x' => {
            let mut hex = || chars.next().and_then(|h| h.to_digit(16)).ok_or(QuoteError::BadEscape('x'));
            let value = hex()? * 16 + hex()?;
            u8::try_from(value).map_err(|_| QuoteError::BadEscape('x'))?
        }
        other => return Err(QuoteError::BadEscape(other)),
    };
    if byte == 0 {
        return Err(QuoteError::Nul);
    }
    buf.push(byte);
    Ok(())
}

/// Quotes one word so that [`split_words`] reads it back unchanged: as is
/// when that is unambiguous, else in double quotes with escapes.
pub fn quote_word(word: &str) -> Cow<'_, str> {
    let plain = |c: char| !(c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    if !word.is_empty() && word.chars().all(plain) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// Joins words with single spaces, quoting each as needed.
pub fn join_words<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| quote_word(w.as_ref())).collect::<Vec<_>>().join(" ")
}

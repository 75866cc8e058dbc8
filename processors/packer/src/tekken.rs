//! Mistral's Tekken tokenizer (the tokenizer of Mistral-Nemo-Base-2407, one of the paper's
//! students), as PyPI's `mistral-common` ships it (`tekken_240718.json`: tiktoken-style
//! ranks), converted to a Hugging Face byte-level BPE for the `tokenizers` crate:
//!
//! - ids 0..`default_num_special_tokens` are special (`<unk>`, `<s>`, `</s>`, `[INST]`, ...,
//!   then `<SPECIAL_20>`..); a normal token's id is its rank plus that count;
//! - only the first `default_vocab_size - default_num_special_tokens` ranks are used;
//! - merges are derived from the ranks: every split of a token into two lower-ranked tokens,
//!   in the order of the merged token's rank (as tiktoken's BPE applies them);
//! - the pre-tokenizer is the file's `pattern`, then bytes are mapped to GPT-2's alphabet.

use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// The special tokens of Tekken files without a `special_tokens` list (version v3 and
/// older), at ids 0..20; the rest up to the special count are `<SPECIAL_{id}>`.
const SPECIAL_TOKENS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

#[derive(Deserialize)]
struct TekkenFile {
    config: TekkenConfig,
    vocab: Vec<TekkenEntry>,
}

#[derive(Deserialize)]
struct TekkenConfig {
    pattern: String,
    default_vocab_size: usize,
    default_num_special_tokens: usize,
}

#[derive(Deserialize)]
struct TekkenEntry {
    rank: usize,
    token_bytes: String,
}

/// GPT-2's byte-to-character table: printable bytes map to themselves, the others to 256+.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable =
        |b: u32| (b'!' as u32..=b'~' as u32).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('?')
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('?')
        };
    }
    table
}

/// Converts the text of a Tekken JSON file.
pub fn tekken_to_tokenizer(json: &[u8]) -> anyhow::Result<Tokenizer> {
    let file: TekkenFile = serde_json::from_slice(json)?;
    let specials = file.config.default_num_special_tokens;
    let inner = file
        .config
        .default_vocab_size
        .checked_sub(specials)
        .ok_or_else(|| anyhow::anyhow!("vocab smaller than its special tokens"))?;
    let table = byte_to_char();
    let mut tokens: Vec<Vec<u8>> = Vec::with_capacity(inner);
    for (i, entry) in file.vocab.iter().take(inner).enumerate() {
        anyhow::ensure!(entry.rank == i, "vocab entry {i} has rank {}", entry.rank);
        tokens.push(base64::engine::general_purpose::STANDARD.decode(&entry.token_bytes)?);
    }
    let as_str = |bytes: &[u8]| -> String { bytes.iter().map(|b| table[*b as usize]).collect() };
    let rank_of: HashMap<&[u8], usize> = tokens.iter().enumerate().map(|(r, t)| (t.as_slice(), r)).collect();
    let mut vocab = Vocab::default();
    for (rank, token) in tokens.iter().enumerate() {
        vocab.insert(as_str(token), (rank + specials) as u32);
    }
    let special_names: Vec<String> = (0..specials)
        .map(|i| SPECIAL_TOKENS.get(i).map_or_else(|| format!("<SPECIAL_{i}>"), |s| s.to_string()))
        .collect();
    for (id, name) in special_names.iter().enumerate() {
        vocab.insert(name.clone(), id as u32);
    }
    let mut merges = Vec::new();
    for (rank, token) in tokens.iter().enumerate().filter(|(_, t)| t.len() > 1) {
        let mut splits: Vec<(usize, usize, usize)> = (1..token.len())
            .filter_map(|i| {
                let (l, r) = (rank_of.get(&token[..i])?, rank_of.get(&token[i..])?);
                (*l < rank && *r < rank).then_some((*l, *r, i))
            })
            .collect();
        splits.sort_unstable();
        merges.extend(splits.into_iter().map(|(_, _, i)| (as_str(&token[..i]), as_str(&token[i..]))));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the Tekken BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let split = Split::new(SplitPattern::Regex(file.config.pattern.clone()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow::anyhow!("Tekken pattern: {e}"))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]))));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = special_names.iter().map(|name| AddedToken::from(name.clone(), true)).collect();
    tokenizer.add_special_tokens(&added);
    Ok(tokenizer)
}

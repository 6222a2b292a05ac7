//! The checkpoint's `chat_template.jinja`, rendered with minijinja exactly as Hugging Face
//! transformers renders it with Jinja2.
//!
//! HF compiles chat templates with `trim_blocks` and `lstrip_blocks` on and `keep_trailing_newline`
//! off, passes `messages`, `add_generation_prompt` and the tokenizer's special tokens
//! (`bos_token`, `eos_token`, ...), and provides a `raise_exception(message)` function. It also adds
//! an `{% generation %}...{% endgeneration %}` block that renders its body unchanged; minijinja has
//! no such tag, so those tags are rewritten before compiling (see [`rewrite_generation_tags`]).
//! HF's `loopcontrols` extension (`{% break %}`) is not available: templates using it fail to
//! compile with a clear error.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use super::error::TextError;
use super::mode::Mode;

/// The template file's name in a checkpoint directory.
const TEMPLATE_FILE: &str = "chat_template.jinja";

/// The tokenizer config's name in a checkpoint directory.
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The name the template is registered under in the environment.
const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn. `content` may hold `<image>` markers, one per image, in image order.
///
/// This is the element type of the JSON array `fovea` reads with `--messages`:
///
/// ```
/// use fovea_model::text::ChatMessage;
///
/// let json = r#"[{"role": "user", "content": "<image>\nWhat is shown?"}]"#;
/// let messages: Vec<ChatMessage> = serde_json::from_str(json).unwrap();
/// assert_eq!(messages[0].role, "user");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `user`, `assistant` or `system`; the template decides what each role renders as (the Phi-4
    /// reasoning-vision template drops `system` turns in favour of its fixed system prompt).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

/// The tokenizer's special tokens as the template sees them (HF's `special_tokens_map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateSpecialTokens {
    /// `bos_token`, e.g. `<|endoftext|>`.
    pub bos_token: Option<String>,
    /// `eos_token`, e.g. `<|im_end|>`.
    pub eos_token: Option<String>,
    /// `unk_token`.
    pub unk_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
}

/// A special token in `tokenizer_config.json`: a plain string or an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigToken {
    Plain(String),
    Added { content: String },
}

impl From<ConfigToken> for String {
    fn from(token: ConfigToken) -> Self {
        match token {
            ConfigToken::Plain(content) | ConfigToken::Added { content } => content,
        }
    }
}

/// The fields of `tokenizer_config.json` that templates see.
#[derive(Deserialize)]
struct TokenizerConfig {
    bos_token: Option<ConfigToken>,
    eos_token: Option<ConfigToken>,
    unk_token: Option<ConfigToken>,
    pad_token: Option<ConfigToken>,
}

impl TemplateSpecialTokens {
    /// Reads the special tokens from a `tokenizer_config.json`; a missing file gives none (a
    /// template that uses them then sees them undefined, as Jinja2 would).
    pub fn from_tokenizer_config(path: &Path) -> Result<Self, TextError> {
        let json = match std::fs::read_to_string(path) {
            Ok(json) => json,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(TextError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config: TokenizerConfig =
            serde_json::from_str(&json).map_err(|source| TextError::TokenizerConfigParse {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            bos_token: config.bos_token.map(String::from),
            eos_token: config.eos_token.map(String::from),
            unk_token: config.unk_token.map(String::from),
            pad_token: config.pad_token.map(String::from),
        })
    }

    /// The tokens that are set, by template variable name.
    fn to_variables(&self) -> BTreeMap<String, String> {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ]
        .into_iter()
        .filter_map(|(name, token)| Some((name.to_owned(), token.clone()?)))
        .collect()
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    environment: Environment<'static>,
    special_tokens: Value,
}

impl ChatTemplate {
    /// Compiles a template from its Jinja source.
    ///
    /// ```
    /// use fovea_model::text::{ChatMessage, ChatTemplate, Mode, TemplateSpecialTokens};
    ///
    /// let source = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
    /// let template = ChatTemplate::new(source, &TemplateSpecialTokens::default())?;
    /// let messages = [ChatMessage { role: "user".into(), content: "Hi".into() }];
    /// assert_eq!(template.render(&messages, Mode::Think)?, "user: Hi\n<think>");
    /// # Ok::<(), fovea_model::text::TextError>(())
    /// ```
    pub fn new(source: &str, special_tokens: &TemplateSpecialTokens) -> Result<Self, TextError> {
        let hf_whitespace = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|source| TextError::TemplateCompile { source })?;
        let mut environment = Environment::new();
        environment.set_syntax(hf_whitespace);
        environment.add_function("raise_exception", raise_exception);
        environment
            .add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|source| TextError::TemplateCompile { source })?;
        Ok(Self {
            environment,
            special_tokens: Value::from(special_tokens.to_variables()),
        })
    }

    /// Loads `chat_template.jinja` and the special tokens of `tokenizer_config.json` (optional)
    /// from a checkpoint directory.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TextError> {
        let path = dir.join(TEMPLATE_FILE);
        let source =
            std::fs::read_to_string(&path).map_err(|source| TextError::Read { path, source })?;
        let special_tokens =
            TemplateSpecialTokens::from_tokenizer_config(&dir.join(TOKENIZER_CONFIG_FILE))?;
        Self::new(&source, &special_tokens)
    }

    /// Renders `messages` with the generation prompt, then appends `mode`'s suffix.
    pub fn render(&self, messages: &[ChatMessage], mode: Mode) -> Result<String, TextError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|message| {
                context! { role => message.role.clone(), content => message.content.clone() }
            })
            .collect();
        let variables = context! {
            messages => messages,
            add_generation_prompt => true,
            ..self.special_tokens.clone()
        };
        let mut prompt = self
            .environment
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(variables))
            .map_err(|source| TextError::TemplateRender { source })?;
        prompt.push_str(mode.prompt_suffix());
        Ok(prompt)
    }
}

/// HF's `raise_exception(message)`: aborts rendering with the template's own message.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Rewrites HF's `{% generation %}` / `{% endgeneration %}` tags to `{% if true %}` /
/// `{% endif %}`.
///
/// HF renders a generation block's body unchanged. The replacement is still a block tag, so
/// `trim_blocks`, `lstrip_blocks` and `-`/`+` modifiers strip the same whitespace around it as
/// Jinja2 strips around the original. Tags are found by scanning for `{%` ... `%}`, so the text
/// `{% generation %}` inside a string literal, comment or raw block would be rewritten too; no real
/// chat template has one there.
fn rewrite_generation_tags(source: &str) -> String {
    let mut rewritten = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        rewritten.push_str(&rest[..open + 2]);
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("%}") else {
            rest = after_open;
            break;
        };
        rewritten.push_str(&rewrite_tag_body(&after_open[..close]));
        rest = &after_open[close..];
    }
    rewritten.push_str(rest);
    rewritten
}

/// The inside of one `{% ... %}` tag, with a generation keyword replaced.
fn rewrite_tag_body(body: &str) -> Cow<'_, str> {
    let keyword = body.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
    let replacement = match keyword {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return Cow::Borrowed(body),
    };
    Cow::Owned(body.replacen(keyword, replacement, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::golden::{golden_cases, golden_template};

    fn user(content: &str) -> ChatMessage {
        ChatMessage {
            role: "user".to_owned(),
            content: content.to_owned(),
        }
    }

    #[test]
    fn golden_messages_render_to_golden_prompt_text() {
        for case in golden_cases() {
            let mode = case.mode();
            let prompt = golden_template().render(&case.messages, mode).unwrap();
            assert_eq!(prompt, case.prompt_text, "case {}", case.name);
        }
    }

    #[test]
    fn system_messages_reach_the_template_which_drops_them() {
        let system = ChatMessage {
            role: "system".to_owned(),
            content: "You are a pirate.".to_owned(),
        };
        let with_system = golden_template()
            .render(&[system, user("Hi")], Mode::Auto)
            .unwrap();
        let without = golden_template().render(&[user("Hi")], Mode::Auto).unwrap();
        assert_eq!(with_system, without);
    }

    #[test]
    fn generation_block_renders_its_body_with_hf_whitespace() {
        let source = "A\n{% generation %}\n{{ 'x' }}\n{% endgeneration %}\nB\n  {%- generation -%}  y  {%+ endgeneration %}z";
        let template = ChatTemplate::new(source, &TemplateSpecialTokens::default()).unwrap();
        // What Jinja2 with trim_blocks + lstrip_blocks renders with the tags as no-op blocks.
        assert_eq!(template.render(&[], Mode::Auto).unwrap(), "A\nx\nBy  z");
    }

    #[test]
    fn generation_rewrite_leaves_other_tags_and_text_alone() {
        let source =
            "{% if generation %}generation{% endif %}{%- generation %}{% endgeneration -%}";
        assert_eq!(
            rewrite_generation_tags(source),
            "{% if generation %}generation{% endif %}{%- if true %}{% endif -%}"
        );
        assert_eq!(rewrite_generation_tags("{% unclosed"), "{% unclosed");
    }

    #[test]
    fn special_tokens_from_tokenizer_config_are_template_variables() {
        let template = ChatTemplate::new(
            "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}",
            &TemplateSpecialTokens::from_tokenizer_config(
                &crate::testing::golden_dir().join("model/tokenizer_config.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            template.render(&[], Mode::Auto).unwrap(),
            "<|endoftext|>|<|im_end|>|<|dummy_85|>"
        );
    }

    #[test]
    fn raise_exception_fails_rendering_with_the_templates_message() {
        let source =
            "{% if messages|length == 0 %}{{ raise_exception('need a message') }}{% endif %}";
        let template = ChatTemplate::new(source, &TemplateSpecialTokens::default()).unwrap();
        let error = template.render(&[], Mode::Auto).unwrap_err();
        assert!(matches!(error, TextError::TemplateRender { .. }));
        assert!(error.to_string().contains("need a message"), "{error}");
    }

    #[test]
    fn invalid_template_is_a_compile_error() {
        let error = ChatTemplate::new("{% for %}", &TemplateSpecialTokens::default()).unwrap_err();
        assert!(
            matches!(error, TextError::TemplateCompile { .. }),
            "{error}"
        );
    }

    #[test]
    fn missing_tokenizer_config_gives_no_special_tokens() {
        let tokens = TemplateSpecialTokens::from_tokenizer_config(Path::new("/nonexistent/x.json"));
        assert_eq!(tokens.unwrap(), TemplateSpecialTokens::default());
    }
}

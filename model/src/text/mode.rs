//! The reasoning mode: what is appended after the chat template's generation prompt.

use std::fmt;
use std::str::FromStr;

use super::error::TextError;
use super::special_tokens::{NOTHINK_MARKER, THINK_OPEN};

/// How the model is asked to answer, chosen per request.
///
/// ```
/// use fovea_model::text::Mode;
///
/// let mode: Mode = "think".parse().unwrap();
/// assert_eq!(mode.prompt_suffix(), "<think>");
/// assert!("deep".parse::<Mode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// The model decides whether to reason; nothing is appended.
    #[default]
    Auto,
    /// Reason first: the prompt ends with `<think>`.
    Think,
    /// Answer directly: the prompt ends with `<|dummy_84|>`.
    NoThink,
}

impl Mode {
    /// The text appended after the rendered generation prompt.
    pub fn prompt_suffix(self) -> &'static str {
        match self {
            Mode::Auto => "",
            Mode::Think => THINK_OPEN,
            Mode::NoThink => NOTHINK_MARKER,
        }
    }

    /// The name used on the command line and in requests.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Think => "think",
            Mode::NoThink => "nothink",
        }
    }
}

impl FromStr for Mode {
    type Err = TextError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Mode::Auto, Mode::Think, Mode::NoThink]
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| TextError::UnknownMode {
                given: name.to_owned(),
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_parse_back_to_the_same_mode() {
        for mode in [Mode::Auto, Mode::Think, Mode::NoThink] {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
        }
    }

    #[test]
    fn unknown_mode_is_an_error_naming_the_choices() {
        let error = "Think".parse::<Mode>().unwrap_err();
        assert!(matches!(&error, TextError::UnknownMode { given } if given == "Think"));
        assert!(error.to_string().contains("`auto`, `think`, `nothink`"));
    }
}

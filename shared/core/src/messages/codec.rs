//! What every message shares: the [`Message`] trait and its `schema` tag, and turning
//! messages into bytes and back with errors that say what was wrong.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Implemented by every message: the `schema` value it carries and where its schema lives.
pub trait Message: Serialize + DeserializeOwned {
    /// `name/version`, e.g. `inference.request/v1`.
    const SCHEMA: &'static str;

    /// The file under `schemas/` holding this message's JSON Schema.
    fn schema_file() -> String {
        schema_file_for(Self::SCHEMA)
    }
}

/// `inference.request/v1` → `inference.request.v1.json`.
pub fn schema_file_for(schema: &str) -> String {
    format!("{}.json", schema.replace('/', "."))
}

/// A `schema` field that always holds `T::SCHEMA`; deserializing checks it.
///
/// Keeping it a zero-sized marker means nobody can build a message with the wrong tag.
pub struct SchemaTag<T>(std::marker::PhantomData<T>);

// Hand-written so they hold for every `T` (derives would demand `T: Clone` and so on).
impl<T> Clone for SchemaTag<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SchemaTag<T> {}
impl<T> PartialEq for SchemaTag<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for SchemaTag<T> {}
impl<T> Default for SchemaTag<T> {
    fn default() -> Self {
        SchemaTag(std::marker::PhantomData)
    }
}
impl<T: Message> std::fmt::Debug for SchemaTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", T::SCHEMA)
    }
}

impl<T: Message> Serialize for SchemaTag<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(T::SCHEMA)
    }
}

impl<'de, T: Message> Deserialize<'de> for SchemaTag<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let found = String::deserialize(d)?;
        if found == T::SCHEMA {
            Ok(SchemaTag(std::marker::PhantomData))
        } else {
            Err(serde::de::Error::custom(format!(
                "schema: expected \"{}\", found \"{found}\"",
                T::SCHEMA
            )))
        }
    }
}

pub fn tag<T>() -> SchemaTag<T> {
    SchemaTag(std::marker::PhantomData)
}

/// Decode a message, with an error that names the field and says what was wrong.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match value.get("schema") {
        None => return Err(DecodeError::MissingSchema),
        Some(serde_json::Value::String(s)) if s != T::SCHEMA => {
            return Err(DecodeError::WrongSchema {
                expected: T::SCHEMA,
                found: s.clone(),
            })
        }
        Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(DecodeError::WrongSchema {
                expected: T::SCHEMA,
                found: other.to_string(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Encode a message as its JSON bytes.
pub fn encode<T: Message>(msg: &T) -> Vec<u8> {
    // Serialization of these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(msg).expect("message serializes")
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not UTF-8: invalid byte at position {valid_up_to}")]
    NotUtf8 { valid_up_to: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("missing field `schema`: expected a string like \"name/v1\"")]
    MissingSchema,
    #[error("schema: expected \"{expected}\", found {found}")]
    WrongSchema {
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DecodeError {
    /// Short machine-readable kind for DLQ records and metrics labels.
    pub fn kind(&self) -> crate::dead_letter::ErrorKind {
        use crate::dead_letter::ErrorKind;
        match self {
            DecodeError::NotUtf8 { .. } => ErrorKind::NotUtf8,
            DecodeError::NotJson(_) => ErrorKind::NotJson,
            DecodeError::MissingSchema => ErrorKind::MissingSchema,
            DecodeError::WrongSchema { .. } => ErrorKind::WrongSchema,
            DecodeError::Invalid(_) => ErrorKind::InvalidMessage,
        }
    }
}

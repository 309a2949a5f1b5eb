//! Ruby values to JSON and back, on Ruby threads only.
//!
//! Outputs accept what JSON can carry: `nil`, `true`/`false`, `Integer`
//! (64-bit), finite `Float`, `String` (re-encoded to UTF-8), `Symbol` (as
//! its name), `Array` and `Hash` (String, Symbol or Integer keys, written as
//! strings). Anything else is refused with the offending path named, so the
//! step fails with a clear `SerializationError` instead of sending garbage.

use std::fmt;

use magnus::r_hash::ForEach;
use magnus::rb_sys::AsRawValue;
use magnus::value::ReprValue;
use magnus::{Error, Float, Integer, RArray, RHash, RString, Ruby, Symbol, Value};
use rb_sys::ruby_value_type as T;
use serde_json::{Map, Number, Value as Json};

/// Deepest nesting of Arrays and Hashes in a value that is not a handler's
/// output (the configuration); it turns a cyclic one into a clear error.
/// Outputs are held to the orchestrator's `max_json_depth` instead (the
/// runtime's `max_json_depth()`).
pub const MAX_DEPTH: u32 = tasker_worker::policy::MAX_JSON_DEPTH;

/// A Ruby value that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConvertError {
    /// What is wrong with the value.
    pub message: String,
    /// Where it is, outermost first (`["items"]`, `[3]`).
    path: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl ConvertError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            path: Vec::new(),
        }
    }

    fn within(mut self, segment: Segment) -> Self {
        // Built while unwinding, innermost first; reversed on display.
        self.path.push(segment);
        self
    }
}

impl ConvertError {
    /// The message with the path from `root` (`value["items"][2]: ...`).
    pub fn at(&self, root: &str) -> String {
        use fmt::Write;
        let mut text = root.to_string();
        for segment in self.path.iter().rev() {
            let _ = match segment {
                Segment::Key(k) => write!(text, "[{k:?}]"),
                Segment::Index(i) => write!(text, "[{i}]"),
            };
        }
        let _ = write!(text, ": {}", self.message);
        text
    }
}

/// The path from the handler's output: `output["items"][2]: ...`.
impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.at("output"))
    }
}

fn class_name(value: Value) -> String {
    value.class().inspect()
}

/// Converts a Ruby value to JSON, Arrays and Hashes nested at most
/// `max_depth` deep (`7` is 0 deep, `[7]` 1, `{"a" => [7]}` 2; a cyclic
/// value is always too deep).
pub fn to_json(value: Value, max_depth: u32) -> Result<Json, ConvertError> {
    convert(value, 0, max_depth)
}

fn too_deep(max_depth: u32) -> ConvertError {
    ConvertError::new(format!(
        "nested more than {max_depth} levels deep (a cyclic structure?); \
         the orchestrator accepts at most {max_depth} (max_json_depth)"
    ))
}

/// `depth`: the Arrays and Hashes around `value`.
fn convert(value: Value, depth: u32, max_depth: u32) -> Result<Json, ConvertError> {
    // SAFETY: `value` is a live Ruby value held on this (Ruby) thread.
    let kind = unsafe { rb_sys::RB_TYPE(value.as_raw()) };
    match kind {
        T::RUBY_T_NIL => Ok(Json::Null),
        T::RUBY_T_TRUE => Ok(Json::Bool(true)),
        T::RUBY_T_FALSE => Ok(Json::Bool(false)),
        T::RUBY_T_FIXNUM | T::RUBY_T_BIGNUM => {
            let int = Integer::from_value(value).expect("an Integer");
            if let Ok(i) = int.to_i64() {
                Ok(Json::Number(i.into()))
            } else if let Ok(u) = int.to_u64() {
                Ok(Json::Number(u.into()))
            } else {
                Err(ConvertError::new(format!(
                    "integer {} does not fit in 64 bits",
                    value.inspect()
                )))
            }
        }
        T::RUBY_T_FLOAT => {
            let f = Float::from_value(value).expect("a Float").to_f64();
            Number::from_f64(f).map(Json::Number).ok_or_else(|| {
                ConvertError::new(format!("float {} has no JSON form", value.inspect()))
            })
        }
        T::RUBY_T_STRING => {
            let s = RString::from_value(value).expect("a String");
            s.to_string().map(Json::String).map_err(|e| {
                ConvertError::new(format!("string {} is not UTF-8: {e}", value.inspect()))
            })
        }
        T::RUBY_T_SYMBOL => {
            let sym = Symbol::from_value(value).expect("a Symbol");
            sym.name()
                .map(|n| Json::String(n.into_owned()))
                .map_err(|e| ConvertError::new(format!("symbol name is not UTF-8: {e}")))
        }
        T::RUBY_T_ARRAY => {
            if depth >= max_depth {
                return Err(too_deep(max_depth));
            }
            let array = RArray::from_value(value).expect("an Array");
            let mut out = Vec::with_capacity(array.len());
            for i in 0..array.len() {
                let item: Value = array
                    .entry(i as isize)
                    .map_err(|e| ConvertError::new(e.to_string()))?;
                out.push(
                    convert(item, depth + 1, max_depth).map_err(|e| e.within(Segment::Index(i)))?,
                );
            }
            Ok(Json::Array(out))
        }
        T::RUBY_T_HASH => {
            if depth >= max_depth {
                return Err(too_deep(max_depth));
            }
            let hash = RHash::from_value(value).expect("a Hash");
            let mut out = Map::new();
            let mut failure = None;
            let walked = hash.foreach(|key: Value, item: Value| {
                let key = match key_string(key) {
                    Ok(key) => key,
                    Err(e) => {
                        failure = Some(e);
                        return Ok(ForEach::Stop);
                    }
                };
                match convert(item, depth + 1, max_depth) {
                    Ok(json) => {
                        out.insert(key, json);
                        Ok(ForEach::Continue)
                    }
                    Err(e) => {
                        failure = Some(e.within(Segment::Key(key)));
                        Ok(ForEach::Stop)
                    }
                }
            });
            if let Some(e) = failure {
                return Err(e);
            }
            walked.map_err(|e| ConvertError::new(e.to_string()))?;
            Ok(Json::Object(out))
        }
        _ => Err(ConvertError::new(format!(
            "cannot serialise {} (a {}) to JSON; return a Hash, Array, String, Symbol, \
             Integer, Float, true, false or nil",
            truncate(value.inspect()),
            class_name(value)
        ))),
    }
}

/// A Hash key as JSON writes it (String, Symbol or Integer keys).
pub fn key_string(key: Value) -> Result<String, ConvertError> {
    if let Some(s) = RString::from_value(key) {
        return s
            .to_string()
            .map_err(|e| ConvertError::new(format!("hash key is not UTF-8: {e}")));
    }
    if let Some(sym) = Symbol::from_value(key) {
        return sym
            .name()
            .map(|n| n.into_owned())
            .map_err(|e| ConvertError::new(format!("hash key is not UTF-8: {e}")));
    }
    if let Some(int) = Integer::from_value(key) {
        return Ok(int.to_string());
    }
    Err(ConvertError::new(format!(
        "hash key {} (a {}) is not a String, Symbol or Integer",
        truncate(key.inspect()),
        class_name(key)
    )))
}

fn truncate(mut text: String) -> String {
    const MAX: usize = 80;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Converts JSON to Ruby: objects become Hashes with String keys.
pub fn to_ruby(ruby: &Ruby, json: &Json) -> Result<Value, Error> {
    Ok(match json {
        Json::Null => ruby.qnil().as_value(),
        Json::Bool(true) => ruby.qtrue().as_value(),
        Json::Bool(false) => ruby.qfalse().as_value(),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ruby.integer_from_i64(i).as_value()
            } else if let Some(u) = n.as_u64() {
                ruby.integer_from_u64(u).as_value()
            } else {
                ruby.float_from_f64(n.as_f64().unwrap_or(f64::NAN))
                    .as_value()
            }
        }
        Json::String(s) => ruby.str_new(s).as_value(),
        Json::Array(items) => {
            let array = ruby.ary_new_capa(items.len());
            for item in items {
                array.push(to_ruby(ruby, item)?)?;
            }
            array.as_value()
        }
        Json::Object(map) => object_to_ruby(ruby, map.iter())?,
    })
}

/// Converts `(key, value)` pairs to a Hash with String keys.
pub fn object_to_ruby<'a>(
    ruby: &Ruby,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a Json)>,
) -> Result<Value, Error> {
    let hash = ruby.hash_new();
    for (key, value) in entries {
        hash.aset(ruby.str_new(key), to_ruby(ruby, value)?)?;
    }
    Ok(hash.as_value())
}

/// A frozen String, for a constant.
pub fn frozen_str(ruby: &Ruby, text: &str) -> RString {
    let string = ruby.str_new(text);
    string.freeze();
    string
}

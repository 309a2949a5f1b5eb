//! Conversion between `serde_json::Value` and plain Python objects, done
//! directly on Python's objects (no `json.dumps` round trip).

use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;
use serde_json::{Map, Number, Value};

/// Deepest nesting of lists and dicts in a value that is not a handler's
/// output (the configuration); it turns a self-containing one into a clear
/// error. Outputs are held to the orchestrator's `max_json_depth` instead
/// (the runtime's `max_json_depth()`).
pub const MAX_DEPTH: u32 = tasker_worker::policy::MAX_JSON_DEPTH;

/// Why a Python value is not JSON, and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// Path segments from the root, outermost first.
    path: Vec<String>,
    message: String,
}

impl ConvertError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn under(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Segments were pushed while unwinding, innermost first.
        f.write_str("$")?;
        for segment in self.path.iter().rev() {
            f.write_str(segment)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Converts a JSON value to plain Python objects (dict, list, str, int,
/// float, bool, None).
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::Null => Ok(py.None().into_bound(py)),
        Value::Bool(b) => b.into_bound_py_any(py),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_bound_py_any(py)
            } else if let Some(u) = n.as_u64() {
                u.into_bound_py_any(py)
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py)
            }
        }
        Value::String(s) => Ok(PyString::new(py, s).into_any()),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            Ok(list.into_any())
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_py(py, item)?)?;
            }
            Ok(dict.into_any())
        }
    }
}

/// Converts a Python value to JSON.
///
/// Accepted: `None`, `bool`, `int` (64-bit, signed or unsigned), finite
/// `float`, `str`, `list` and `tuple`, `dict` with `str` keys (`int` and
/// `bool` keys become strings, as `json.dumps` does), and subclasses of
/// these. Anything else (sets, bytes, arbitrary objects, NaN and infinities,
/// which JSON cannot express) is an error naming the place and the type,
/// and so is nesting of lists, tuples and dicts deeper than `max_depth`
/// (`7` is 0 deep, `[7]` 1, `{"a": [7]}` 2; a value that contains itself is
/// always too deep).
pub fn from_py(obj: &Bound<'_, PyAny>, max_depth: u32) -> Result<Value, ConvertError> {
    Converter { max_depth }.convert(obj, 0)
}

struct Converter {
    max_depth: u32,
}

impl Converter {
    fn convert(&self, obj: &Bound<'_, PyAny>, depth: u32) -> Result<Value, ConvertError> {
        if obj.is_none() {
            return Ok(Value::Null);
        }
        if let Ok(s) = obj.cast::<PyString>() {
            return s
                .to_cow()
                .map(|s| Value::String(s.into_owned()))
                .map_err(|e| ConvertError::new(format!("string cannot be encoded: {e}")));
        }
        // bool before int: bool is a subclass of int.
        if let Ok(b) = obj.cast::<PyBool>() {
            return Ok(Value::Bool(b.is_true()));
        }
        if obj.cast::<PyInt>().is_ok() {
            if let Ok(i) = obj.extract::<i64>() {
                return Ok(Value::from(i));
            }
            if let Ok(u) = obj.extract::<u64>() {
                return Ok(Value::from(u));
            }
            return Err(ConvertError::new(
                "integer does not fit in 64 bits (JSON numbers here are i64/u64)",
            ));
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            let v = f.value();
            return Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| ConvertError::new(format!("float {v} is not valid JSON")));
        }
        // A list, tuple or dict here is `depth + 1` deep.
        let too_deep = || {
            let max = self.max_depth;
            ConvertError::new(format!(
                "nested more than {max} levels deep (or contains itself); \
             the orchestrator accepts at most {max} (max_json_depth)"
            ))
        };
        if let Ok(dict) = obj.cast::<PyDict>() {
            if depth >= self.max_depth {
                return Err(too_deep());
            }
            let mut map = Map::new();
            for (key, item) in dict.iter() {
                let key = dict_key(&key)?;
                let value = self
                    .convert(&item, depth + 1)
                    .map_err(|e| e.under(format!("[{key:?}]")))?;
                map.insert(key, value);
            }
            return Ok(Value::Object(map));
        }
        if let Ok(list) = obj.cast::<PyList>() {
            if depth >= self.max_depth {
                return Err(too_deep());
            }
            return self.sequence(list.iter(), depth);
        }
        if let Ok(tuple) = obj.cast::<PyTuple>() {
            if depth >= self.max_depth {
                return Err(too_deep());
            }
            return self.sequence(tuple.iter(), depth);
        }
        let type_name = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        Err(ConvertError::new(format!(
            "object of type {type_name} is not JSON-serialisable"
        )))
    }

    fn sequence<'py>(
        &self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: u32,
    ) -> Result<Value, ConvertError> {
        items
            .enumerate()
            .map(|(i, item)| {
                self.convert(&item, depth + 1)
                    .map_err(|e| e.under(format!("[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }
}

fn dict_key(key: &Bound<'_, PyAny>) -> Result<String, ConvertError> {
    if let Ok(s) = key.cast::<PyString>() {
        return s
            .to_cow()
            .map(|s| s.into_owned())
            .map_err(|e| ConvertError::new(format!("dict key cannot be encoded: {e}")));
    }
    if let Ok(b) = key.cast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.into());
    }
    if key.cast::<PyInt>().is_ok() {
        if let Ok(i) = key.extract::<i128>() {
            return Ok(i.to_string());
        }
    }
    let type_name = key
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(ConvertError::new(format!(
        "dict key of type {type_name} is not a string"
    )))
}

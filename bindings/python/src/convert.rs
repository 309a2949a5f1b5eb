//! Conversion between `serde_json::Value` and plain Python objects, done
//! directly on Python's objects (no `json.dumps` round trip).

use std::fmt;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
    PyType,
};
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
/// these; and, as strings (see [`encode_other`]), timezone-aware
/// `datetime.datetime`, `datetime.date`, finite `decimal.Decimal` and
/// `uuid.UUID`. Anything else (sets, bytes, arbitrary objects, NaN and
/// infinities, which JSON cannot express, naive datetimes) is an error
/// naming the place and the type, and so is nesting of lists, tuples and
/// dicts deeper than `max_depth` (`7` is 0 deep, `[7]` 1, `{"a": [7]}` 2; a
/// value that contains itself is always too deep).
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
            return self.object(dict.iter().map(Ok), depth);
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
        if let Some(text) = encode_other(obj)? {
            return Ok(Value::String(text));
        }
        // Any other Mapping or Sequence, as the type hints promise
        // (`Mapping[str, object]`, `Sequence[...]`): a `range`, a `deque`
        // or a `MappingProxyType` passed the type checkers and then failed
        // its step every time. Looked for last, so plain outputs pay nothing.
        let py = obj.py();
        let failed =
            |e: PyErr| ConvertError::new(format!("{} could not be read: {e}", type_name(obj)));
        let abc = |cell: &'static PyOnceLock<Py<PyType>>, name: &str| {
            let module = if name == "UserString" {
                "collections"
            } else {
                "collections.abc"
            };
            cell.import(py, module, name)
                .and_then(|ty| obj.is_instance(ty))
                .map_err(failed)
        };
        // A Sequence whose items are of its own type, one character each:
        // read as the sequence it is, it nested without end.
        if abc(&USER_STRING, "UserString")? {
            return obj
                .str()
                .and_then(|s| s.to_cow().map(|s| Value::String(s.into_owned())))
                .map_err(failed);
        }
        if abc(&MAPPING, "Mapping")? {
            if depth >= self.max_depth {
                return Err(too_deep());
            }
            let pairs = obj
                .call_method0("items")
                .and_then(|i| i.try_iter())
                .map_err(failed)?
                .map(|pair| pair.and_then(|p| p.extract()).map_err(failed));
            return self.object(pairs, depth);
        }
        // Bytes are a Sequence of ints, and not what JSON text means by them.
        let bytes_like = obj.cast::<PyBytes>().is_ok()
            || obj.cast::<PyByteArray>().is_ok()
            || obj.cast::<PyMemoryView>().is_ok();
        if !bytes_like && abc(&SEQUENCE, "Sequence")? {
            if depth >= self.max_depth {
                return Err(too_deep());
            }
            let items = obj
                .try_iter()
                .map_err(failed)?
                .collect::<PyResult<Vec<_>>>()
                .map_err(failed)?;
            return self.sequence(items.into_iter(), depth);
        }
        Err(ConvertError::new(format!(
            "object of type {} is not JSON-serialisable",
            type_name(obj)
        )))
    }

    /// A JSON object of `pairs` (key, value), each value `depth + 1` deep.
    fn object<'py>(
        &self,
        pairs: impl Iterator<Item = Result<(Bound<'py, PyAny>, Bound<'py, PyAny>), ConvertError>>,
        depth: u32,
    ) -> Result<Value, ConvertError> {
        let mut map = Map::new();
        for pair in pairs {
            let (key, item) = pair?;
            let key = dict_key(&key)?;
            let value = self
                .convert(&item, depth + 1)
                .map_err(|e| e.under(format!("[{key:?}]")))?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
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
    Err(ConvertError::new(format!(
        "dict key of type {} is not a string",
        type_name(key)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

static DATETIME: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DATE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DECIMAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static UUID: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MAPPING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SEQUENCE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static USER_STRING: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The JSON text of a value of a type JSON lacks but whose text form is
/// standard, or `None` when `obj` is none of them (instances of subclasses
/// included):
///
/// * `datetime.datetime` with a UTC offset: `isoformat()`, ISO 8601 with
///   the offset kept (`2025-01-23T10:00:00.123000+01:00`); a naive one (no
///   offset) is an error, since no reader could tell which time it means;
/// * `datetime.date`: `isoformat()` (`2025-01-23`);
/// * `decimal.Decimal`: `str()`, every digit kept (`"12.50"`, `"1E+3"`);
///   NaN and infinities are errors, as for `float`;
/// * `uuid.UUID`: `str()`, the canonical lower-case hyphenated form.
///
/// Only reached for values that are no JSON type, so plain outputs pay
/// nothing for it.
fn encode_other(obj: &Bound<'_, PyAny>) -> Result<Option<String>, ConvertError> {
    let py = obj.py();
    let failed =
        |e: PyErr| ConvertError::new(format!("{} could not be encoded: {e}", type_name(obj)));
    let is = |cell: &'static PyOnceLock<Py<PyType>>, module: &str, name: &str| {
        cell.import(py, module, name)
            .and_then(|ty| obj.is_instance(ty))
            .map_err(failed)
    };
    let text = |method: &str| -> Result<String, ConvertError> {
        let value = if method == "str" {
            obj.str()
        } else {
            obj.call_method0(method)
                .and_then(|v| v.cast_into::<PyString>().map_err(PyErr::from))
        };
        value
            .and_then(|s| s.to_cow().map(|s| s.into_owned()))
            .map_err(failed)
    };
    // datetime before date: a datetime is a date.
    if is(&DATETIME, "datetime", "datetime")? {
        let offset = obj.call_method0("utcoffset").map_err(failed)?;
        if offset.is_none() {
            return Err(ConvertError::new(
                "naive datetime (no timezone), which no reader could place in time: give it \
                 one (e.g. .replace(tzinfo=datetime.timezone.utc)) or return .isoformat()",
            ));
        }
        return text("isoformat").map(Some);
    }
    if is(&DATE, "datetime", "date")? {
        return text("isoformat").map(Some);
    }
    if is(&DECIMAL, "decimal", "Decimal")? {
        let finite = obj
            .call_method0("is_finite")
            .and_then(|f| f.is_truthy())
            .map_err(failed)?;
        if !finite {
            return Err(ConvertError::new(format!(
                "Decimal {} is not valid JSON",
                text("str")?
            )));
        }
        return text("str").map(Some);
    }
    if is(&UUID, "uuid", "UUID")? {
        return text("str").map(Some);
    }
    Ok(None)
}

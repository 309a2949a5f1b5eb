"""The native module against what it must match: its type stubs (names and
parameters), the Rust constants it exports (error kinds, config keys), the
configuration resolution and the thread policy shared with the other SDKs."""

from __future__ import annotations

import ast
import inspect
import pickle
import re
import traceback
from pathlib import Path
from typing import Dict, List, Set

import pytest

import tasker_core
from conftest import CONFIG, ROOT
from tasker_core import ConfigError, Worker, _native, error_types

STUB = Path(_native.__file__).with_name("_native.pyi")
if not STUB.exists():  # an installed wheel keeps it beside the package
    STUB = Path(tasker_core.__file__).with_name("_native.pyi")


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"))


def public(names: Set[str]) -> Set[str]:
    return {n for n in names if not n.startswith("_")}


def stub_module_names() -> Set[str]:
    names = set()
    for node in stub_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return public(names)


def stub_params(node: ast.FunctionDef) -> List[str]:
    args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    return [a for a in args if a not in ("self", "cls")]


def native_params(fn: object) -> List[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


def test_the_stubs_name_exactly_what_the_native_module_exports():
    assert stub_module_names() == public(set(dir(_native)))


def test_the_stubs_give_each_function_its_native_parameters():
    checked = 0
    for node in stub_tree().body:
        if isinstance(node, ast.FunctionDef):
            assert stub_params(node) == native_params(getattr(_native, node.name)), node.name
            checked += 1
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_native, node.name)
            members = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
            if issubclass(cls, BaseException):
                continue
            assert public(set(members)) == public(set(vars(cls))), node.name
            for name, member in members.items():
                value = inspect.getattr_static(cls, name)
                if name == "__init__":
                    assert stub_params(member) == native_params(cls), node.name
                elif not isinstance(value, property) and callable(value):
                    assert stub_params(member) == native_params(value), f"{node.name}.{name}"
                checked += 1
    assert checked > 20


def rust_error_types() -> Dict[str, str]:
    """`tasker_protocol::error_types`, read from its source."""
    source = (ROOT / "crates" / "tasker-protocol" / "src" / "messages.rs").read_text()
    module = source[source.index("pub mod error_types {") :]
    module = module[: module.index("\n}\n")]
    return dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', module))


def test_every_error_kind_of_the_protocol_is_exported():
    expected = rust_error_types()
    assert len(expected) >= 10
    assert dict(_native.ERROR_TYPES) == expected
    for name, value in expected.items():
        assert getattr(_native, name) == value
        assert getattr(error_types, name) == value
    assert set(error_types.__all__) == {"ERROR_TYPES", *expected}
    with pytest.raises(TypeError):
        _native.ERROR_TYPES["PANIC"] = "x"  # type: ignore[index]


def test_the_package_spells_no_error_kind_itself():
    package = Path(tasker_core.__file__).parent
    kinds = set(rust_error_types().values())
    for path in package.glob("*.py"):
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not literals & kinds, f"{path.name} spells {literals & kinds}"


def rust_config_keys() -> List[str]:
    source = (ROOT / "crates" / "tasker-config" / "src" / "lib.rs").read_text()
    block = source[source.index("pub const KEYS: &[&str] = &[") :]
    return re.findall(r'"(\w+)"', block[: block.index("];")])


def test_config_keys_are_tasker_config_keys():
    assert list(_native.CONFIG_KEYS) == rust_config_keys()
    assert sorted(_native.load_config()) == sorted(_native.CONFIG_KEYS)


def test_unknown_keys_are_named_with_the_closest_one(monkeypatch):
    with pytest.raises(ConfigError) as info:
        _native.load_config(options={"worker_capcity": 3})
    assert "`worker_capcity`" in str(info.value)
    assert "did you mean `worker_capacity`?" in str(info.value)

    with pytest.raises(ConfigError) as info:
        _native.load_config(options={"endpiont": "tcp://127.0.0.1:1"})
    assert "did you mean `endpoint`?" in str(info.value)

    monkeypatch.setenv("TASKER_HEARTBEAT_INTERVL_MS", "200")
    with pytest.raises(ConfigError) as info:
        Worker()
    assert "TASKER_HEARTBEAT_INTERVL_MS" in str(info.value)
    assert "did you mean `heartbeat_interval_ms`?" in str(info.value)


def test_native_errors_are_named_where_users_import_them():
    # A traceback prints the class by its module; `_native.ConfigError` sent
    # readers looking for a module they cannot import, and pickle (which
    # multiprocessing uses to return errors) could not find the class.
    with pytest.raises(ConfigError) as info:
        _native.load_config(options={"worker_capcity": 3})
    line = traceback.format_exception_only(type(info.value), info.value)[-1]
    assert line.startswith("tasker_core.ConfigError: "), line
    for cls in (tasker_core.TaskerError, ConfigError, tasker_core.WorkerError, tasker_core.WorkerRefused):
        assert (cls.__module__, getattr(tasker_core, cls.__name__)) == ("tasker_core", cls)
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), str(again)) == (ConfigError, str(info.value))


def test_options_are_plain_values_checked_by_key():
    config = _native.load_config(
        CONFIG, "test", {"worker_capacity": 3, "default_retryable": True, "linger_ms": None}
    )
    assert (config["worker_capacity"], config["default_retryable"]) == (3, True)
    assert config["linger_ms"] == _native.load_config(CONFIG, "test")["linger_ms"]  # None: not given
    for options, fragment in [
        ({"worker_capacity": "many"}, "`worker_capacity`"),
        ({"worker_capacity": {1, 2}}, "`worker_capacity`"),
        ({"submit_policy": "sometimes"}, "`submit_policy`"),
        ({5: 1}, "`5`"),
    ]:
        with pytest.raises(ConfigError) as info:
            _native.load_config(options=options)
        assert fragment in str(info.value), (options, str(info.value))


def test_the_runtime_takes_a_complete_config_only():
    config = _native.load_config()
    config["no_such_key"] = 1
    with pytest.raises(ConfigError, match="`no_such_key`"):
        _native.WorkerRuntime(config, ["work"])


def test_thread_policy_comes_from_rust():
    assert _native.handler_threads(4) == 4
    assert _native.handler_threads(100) == _native.DEFAULT_MAX_THREADS == 8
    assert _native.handler_threads(4, 10) == 4, "never more threads than capacity"
    assert _native.handler_threads(4, 2) == 2
    for bad in (0, -1, "two", 1.5):
        with pytest.raises(ConfigError, match="threads"):
            _native.handler_threads(4, bad)
    assert _native.chunk_size(10, 4) == 3
    assert _native.chunk_size(8, 8) == 1
    assert _native.chunk_size(200, 1) == 100, "a lone thread pulls half"
    assert _native.MAX_JSON_DEPTH == 100


def test_worker_threads_follow_the_policy():
    assert Worker(capacity=2, threads=5).threads == 2
    assert Worker(capacity=20).threads == 8

    async def coroutine(step):
        return None

    worker = Worker(capacity=20)
    worker.register("a", coroutine)
    assert worker.threads == 1, "all handlers async: one thread hands steps over"
    worker.register("b", lambda step: None)
    assert worker.threads == 8


def test_timeouts_are_bounded_by_the_policy():
    rt = _native.WorkerRuntime(_native.load_config(options={"linger_ms": 0}), ["work"])
    try:
        with pytest.raises(ValueError, match="non-negative"):
            rt.next_steps(1, -1.0)
        with pytest.raises(ValueError, match="NaN"):
            rt.join(float("nan"))
        assert rt.next_steps(1, 0.0) == []
    finally:
        rt.stop()
        assert rt.join(float("inf"))

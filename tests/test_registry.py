"""The method layer: one registry, one spec grammar, typed settings, and a package that imports in one direction."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from fake_methods import scripted_head
from vlmcls.errors import ConfigError
from vlmcls.methods import (
    HEAD,
    METHODS,
    MethodOptions,
    RunContext,
    TextSide,
    build_config,
    get_record,
    option_fields,
    parse_spec,
    parse_specs,
    run_spec,
)

PACKAGE = Path(__file__).resolve().parent.parent / "vlmcls"


# -- the spec grammar ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, head, stages", [
    ("templates", "templates", ()),
    ("cbd+fudd+tip", "cbd", ("fudd", "tip")),
    ("cbd+tip+fudd", "cbd", ("fudd", "tip")),  # stages run in the registry's order, however written
    ("waffle+frechet+tfup+tip", "waffle", ("tip", "tfup", "frechet")),
    (" name + tfup ", "name", ("tfup",)),
    ("fudd", None, ("fudd",)),  # the head is picked from the settings when the spec runs
    ("tip", None, ("tip",)),
])
def test_specs_parse_to_one_head_and_stages_in_run_order(text, head, stages):
    spec = parse_spec(text)
    assert (spec.head, spec.stages) == (head, stages)


@pytest.mark.parametrize("text, message", [
    ("magic", r"unknown method 'magic' in 'magic'\. Valid: name, templates, cbd, waffle, cupl, fudd, tip, tfup, frechet"),
    ("cbd+", "empty part"),
    ("cbd+cbd", "names a stage twice"),
    ("cbd+name", "two heads"),
    ("tip+cbd", "must start with its head 'cbd'"),
    ("cbd+fudd+fudd", "twice"),
])
def test_bad_specs_say_what_is_valid(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(text)


def test_a_comma_list_of_specs_keeps_order_and_drops_repeats():
    assert [s.text for s in parse_specs("name, cbd+tip,name")] == ["name", "cbd+tip"]


def test_a_lone_rerank_picks_its_head_from_the_settings(tmp_path):
    assert parse_spec("fudd").resolve(MethodOptions()).head == "templates"
    assert parse_spec("fudd").resolve(MethodOptions(descriptors=str(tmp_path / "d.json"))).head == "cbd"
    assert parse_spec("fudd").resolve(MethodOptions(methods={"fudd": {"base": "waffle"}})).head == "waffle"
    with pytest.raises(ConfigError, match="fudd.base is 'tip', not a first-stage head"):
        parse_spec("fudd").resolve(MethodOptions(methods={"fudd": {"base": "tip"}}))


def test_classify_adds_the_refiners_whose_input_is_given(tmp_path):
    options = MethodOptions(methods={"tip": {"support": tmp_path}, "frechet": {"hierarchy": tmp_path / "h"}})
    assert parse_spec("cbd").with_implied(options).stages == ("tip", "frechet")
    assert parse_spec("cbd+tip").with_implied(MethodOptions()).stages == ("tip",)


# -- typed settings --------------------------------------------------------------------------------------------


def _context(options: MethodOptions) -> RunContext:
    generator = torch.Generator().manual_seed(0)

    def encode_texts(texts):
        return torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=generator), dim=-1)

    return RunContext(TextSide(encode_texts, 100.0, None, "softmax"), ["cat", "dog", "car"], options)


def test_an_unknown_option_is_an_error_that_lists_the_methods_valid_keys():
    with pytest.raises(ConfigError, match=r"'fudd' has no option 'kk'\. Did you mean 'k'\? Valid: k, rank, base"):
        MethodOptions(methods={"fudd": {"kk": 3}})
    with pytest.raises(ConfigError, match=r"options for unknown method 'fud'\. Did you mean 'fudd'\?"):
        MethodOptions(methods={"fud": {"k": 3}})


def test_options_from_text_are_converted_to_their_field_types_or_refused():
    fudd = get_record("fudd")
    config = build_config(fudd, {"k": "5", "max_pairs": 7.0, "pairs": "p.json"})
    assert (config.k, config.max_pairs, config.pairs) == (5, 7, Path("p.json"))
    with pytest.raises(ConfigError, match=r"fudd\.k is 'five'; it must be an integer"):
        build_config(fudd, {"k": "five"})
    with pytest.raises(ConfigError, match=r"fudd\.k must be ≥ 2; got '1'"):
        build_config(fudd, {"k": 1})
    with pytest.raises(ConfigError, match=r"fudd\.rank is 'bse'\. Did you mean 'base'\?"):
        build_config(fudd, {"rank": "bse"})
    assert build_config(get_record("tip"), {"tune": "true"}).tune is True


def test_every_option_has_a_doc_line_and_a_type_the_cli_can_parse():
    from vlmcls.methods.registry import type_text

    for name, record in METHODS.items():
        for key, field in option_fields(record).items():
            assert field.metadata.get("doc"), f"{name}.{key}"
            assert "list" not in type_text(record, key) or key == "label_space", f"{name}.{key}"


def test_a_new_method_is_one_record(monkeypatch):
    """Registered once, it parses in specs, runs through the API's pipeline and takes refiners."""
    def always_dog(feats, class_names):
        logits = torch.zeros(feats.shape[0], len(class_names))
        logits[:, class_names.index("dog")] = 3.0
        return logits

    monkeypatch.setitem(METHODS, "always_dog", scripted_head("always_dog", always_dog))
    out = run_spec(parse_spec("always_dog+tfup"), _context(MethodOptions()), torch.nn.functional.normalize(torch.randn(12, 8), dim=-1))
    assert out.probs.argmax(1).tolist() == [1] * 12
    assert "self_cache_per_class" in out.info


# -- the package's shape ---------------------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(sub) for sub in ast.walk(node))
    return hidden


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, at the top or inside functions (type-checking imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = _type_checking_nodes(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom):
            base_parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(base_parts + ([node.module] if node.module else []))
            if not node.module and base != name:  # `from . import x` runs the package's __init__ first
                found.add(base)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_the_package_has_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        trail.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycle = trail[trail.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        trail.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert graph["vlmcls.methods.heads"] and "vlmcls.api" not in set().union(
        *(graph[m] for m in graph if m.startswith("vlmcls.methods")))  # methods never reach back into the API


def _literals_outside_help(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings and not a help= text."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "help":
            skipped.update(id(sub) for sub in ast.walk(node.value))
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skipped.add(id(first.value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skipped]


def test_only_the_registry_names_methods():
    """No code outside vlmcls/methods/ spells a method name (or a spec) in a string, except help texts.

    'name' is also a template set and a common dict key, and a setting may share a method's name (the templates
    setting), so those are checked inside specs only."""
    # 'name' and 'templates' are also a template-set word and an API keyword; 'unknown' is also the label an image
    # gets when it shows none of the classes (the open world's unknown.word), which review, sort and export read
    words = set(METHODS) - {"name", "templates", "unknown"}
    options = {f"{name}.{key}" for name, record in METHODS.items() for key in option_fields(record)}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "methods" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for node in _literals_outside_help(ast.parse(path.read_text(encoding="utf-8"))):
            text = node.value
            parts = [p.strip() for p in text.replace(",", "+").split("+")]
            is_spec = len(parts) > 1 and all(p in METHODS for p in parts)
            if text in words or is_spec or any(o in text for o in options):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {text!r}")
    assert not offenders, "method names outside the registry:\n" + "\n".join(offenders)


def test_every_record_is_complete():
    for name, record in METHODS.items():
        assert record.name == name and record.summary and record.cost and record.text_source
        if record.kind != HEAD:
            assert record.head_when_alone is not None, name


def test_commands_that_run_methods_take_the_same_method_flags():
    """--opt and every promoted flag are flags of classify and eval, spelled the same."""
    import click
    import typer.main

    from vlmcls.cli import app
    from vlmcls.methods import promoted_flags

    commands = typer.main.get_command(app).commands
    flags = {name: {o for p in commands[name].get_params(click.Context(commands[name])) for o in p.opts}
             for name in ("classify", "eval")}
    wanted = {"--opt", "-O", *promoted_flags()}
    assert wanted <= flags["classify"] and wanted <= flags["eval"]
    assert {"--pairs", "--support", "--descriptors", "--templates"} <= wanted


def test_the_cli_names_options_as_the_library_does(labelled_folder, tmp_path):
    from typer.testing import CliRunner

    from vlmcls.cli import app

    missing_model = f"local-dir:{tmp_path / 'nope'}"  # every check below fails before a model would load
    base = ["eval", str(labelled_folder), "-c", "cat,dog", "-m", missing_model]
    typo = CliRunner().invoke(app, [*base, "--methods", "fudd", "--opt", "fudd.kk=3"])
    assert typo.exit_code == 2 and "'fudd' has no option 'kk'. Did you mean 'k'?" in typo.output
    assert "Valid: k, rank, base, max_pairs" in typo.output
    bad_type = CliRunner().invoke(app, [*base, "--methods", "fudd", "--opt", "fudd.k=many"])
    assert bad_type.exit_code == 2 and "fudd.k is 'many'; it must be an integer" in bad_type.output
    not_opt = CliRunner().invoke(app, [*base, "--opt", "k=3"])
    assert not_opt.exit_code == 2 and "is not METHOD.KEY=VALUE" in not_opt.output


def test_no_module_is_over_500_lines():
    """STYLE.md: a file that passes ~500 lines is asking to be split (the layout groups modules by what they do)."""
    long = {str(path.relative_to(PACKAGE.parent)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long

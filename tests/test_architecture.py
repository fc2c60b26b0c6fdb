"""The package's layers (docs/ARCHITECTURE.md): imports run one way, downward, with no cycle; the core
imports neither PtyPy nor the plugin host; the data modules import without MindSpore; every
setting is documented in the README from the one settings source."""
import ast
import pathlib
import subprocess
import sys

import pytest

import ptypy_npu
from ptypy_npu import settings

PACKAGE = pathlib.Path(ptypy_npu.__file__).parent
ROOT = PACKAGE.parent

#: Every module of the package in its layer, lowest first; a module imports only from its own layer or below.
LAYERS = {
    'data (numpy only)': ['__init__', 'settings', 'scan', 'batches', 'gauge', 'files', 'guesses', 'io', 'objects', 'simulate',
                          'metrics'],
    'core (MindSpore)': ['device', 'distributed', 'physics', 'networks', 'optim', 'objective', 'step', 'checkpoints',
                         'solver'],
    'plugin host': ['hookspecs', 'builtin', 'plugins'],
    'services': ['models', 'comparison', 'pretraining'],
    'PtyPy-facing': ['ptypy_plugin.__init__', 'ptypy_plugin.engine', 'ptypy_plugin.npz_loader', 'ptypy_plugin.simulated_scan',
                     'ptypy_plugin.moonflower', 'ptypy_plugin.runner'],
    'apps': ['cli'],
}
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def module_name(path):
    return '.'.join(path.relative_to(PACKAGE).with_suffix('').parts)


def resolve(dotted):
    """The module name of ``dotted`` (relative to the package): a module, a package's ``__init__``,
    or None when it names no module (a name inside one)."""
    as_path = PACKAGE.joinpath(*dotted.split('.')) if dotted else PACKAGE
    if as_path.is_dir():
        return f"{dotted}.__init__" if dotted else '__init__'
    return dotted if as_path.with_suffix('.py').is_file() else None


def imports(path):
    """(package-internal modules, top-level external packages) that the module at ``path`` imports,
    anywhere in it (function bodies included)."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] == 'ptypy_npu':
                    internal.add(resolve(alias.name[len('ptypy_npu.'):] if '.' in alias.name else ''))
                else:
                    external.add(alias.name.split('.')[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module.split('.')[0] != 'ptypy_npu':
                external.add(node.module.split('.')[0])
                continue
            if node.level == 0:
                base = node.module.split('.')[1:]
            else:
                base = package[:len(package) - node.level + 1] + (node.module.split('.') if node.module else [])
            owner = resolve('.'.join(base))
            for alias in node.names:  # `from . import module` names modules; `from .m import name` names m
                internal.add(resolve('.'.join(base + [alias.name])) or owner)
    return internal - {module_name(path), None}, external


GRAPH = {module_name(path): imports(path) for path in PACKAGE.rglob('*.py')}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LAYER_OF)) == [], "place new modules in LAYERS (and docs/ARCHITECTURE.md)"
    assert sorted(set(LAYER_OF) - set(GRAPH)) == []


@pytest.mark.parametrize('module', sorted(GRAPH))
def test_imports_run_downward(module):
    upward = [target for target in GRAPH[module][0] if LAYER_OF[target] > LAYER_OF[module]]
    assert upward == [], f"{module} ({list(LAYERS)[LAYER_OF[module]]}) imports higher layers: {upward}"


def test_the_package_has_no_import_cycle():
    state, cycles = {}, []

    def visit(module, path):
        state[module] = 'open'
        for target in sorted(GRAPH[module][0]):
            if state.get(target) == 'open':
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 'done'

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize('module', LAYERS['data (numpy only)'] + LAYERS['core (MindSpore)'])
def test_the_core_imports_neither_ptypy_nor_the_plugin_host(module):
    internal, external = GRAPH[module]
    assert 'ptypy' not in external
    assert not internal & set(LAYERS['plugin host'])


@pytest.mark.parametrize('module', LAYERS['data (numpy only)'])
def test_data_modules_import_without_mindspore(module):
    """In a process where importing MindSpore fails, the data modules still import."""
    name = 'ptypy_npu' if module == '__init__' else f"ptypy_npu.{module}"
    code = f"import sys; sys.modules['mindspore'] = None; import {name}; print('ok')"
    finished = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert finished.stdout.strip() == 'ok', finished.stderr[-2000:]


def test_importing_the_package_warns_of_nothing_and_loads_no_mindspore():
    code = ("import sys, warnings; warnings.simplefilter('error'); import ptypy_npu, ptypy_npu.io, ptypy_npu.simulate; "
            "print('mindspore' in sys.modules)")
    finished = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                              env={'PATH': '', 'PYTHONPATH': str(ROOT)})
    assert finished.stdout.strip() == 'False', finished.stderr[-2000:]


def test_the_readme_table_is_the_settings_table():
    readme = (ROOT / 'README.md').read_text()
    assert settings.markdown_table() in readme, "regenerate the README's settings table: settings.markdown_table()"


def test_cli_flags_carry_the_settings_defaults_and_help():
    from ptypy_npu.cli import build_parser
    solve = build_parser()._subparsers._group_actions[0].choices['solve']
    actions = {action.option_strings[0]: action for action in solve._actions if action.option_strings}
    for flag, key in settings.flags().items():
        default = dict((k, d) for k, d, _ in settings.walk(settings.Settings()))[key]
        assert f"[{key}; default {default}]" in actions[flag].help, flag

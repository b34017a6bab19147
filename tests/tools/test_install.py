"""The plugin is installed correctly and fails helpfully when it is not.

The checks that import the plugin run in a fresh interpreter whose working
directory is a temporary directory, because the reported failures
(MD#11082, MD#11895, SX#5) only show up outside the repository root.
"""
import json
import re
import sysconfig
from pathlib import Path

import pytest

PLUGIN_DIR_CHECK = """
import json, sys
import projects, projects.codetr
from mmcv.ops import MultiScaleDeformableAttention, RoIAlign, nms
print(json.dumps(dict(plugin=projects.codetr.__file__,
                      projects_file=getattr(projects, '__file__', None),
                      projects_path=list(projects.__path__))))
"""

CUSTOM_IMPORTS_CHECK = """
import json, sys
from mmengine.config import Config
assert 'projects.codetr' not in sys.modules
cfg = Config.fromfile(sys.argv[1] if len(sys.argv) > 1 else 'plugin_cfg.py')
from mmdet.registry import MODELS
detector = MODELS.get('CoDETR')
print(json.dumps(dict(imported='projects.codetr' in sys.modules,
                      detector_module=getattr(detector, '__module__', None),
                      custom_imports=cfg.custom_imports.imports)))
"""


def _last_json(stdout: str) -> dict:
    """The JSON line a checked subprocess prints last (after any logs)."""
    return json.loads(stdout.strip().splitlines()[-1])


def test_plugin_imports_from_any_directory(run_python, repo_root, tmp_path):
    # A second `projects` directory (as in an mmdetection checkout) in the
    # working directory must coexist with the plugin, not hide it.
    (tmp_path / 'projects' / 'other').mkdir(parents=True)
    (tmp_path / 'projects' / 'other' / '__init__.py').write_text('')
    proc = run_python(PLUGIN_DIR_CHECK + 'import projects.other\n')
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert Path(result['plugin']) == (
        repo_root / 'projects' / 'codetr' / '__init__.py')
    # Namespace package: no __init__.py, portions from several directories.
    assert result['projects_file'] is None
    assert str(tmp_path / 'projects') in result['projects_path']


def test_custom_imports_registers_plugin(run_python, tmp_path):
    (tmp_path / 'plugin_cfg.py').write_text(
        "custom_imports = dict(imports=['projects.codetr'], "
        'allow_failed_imports=False)\n')
    proc = run_python(CUSTOM_IMPORTS_CHECK)
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert result['imported']
    assert result['custom_imports'] == ['projects.codetr']
    assert result['detector_module'] == \
        'projects.codetr.models.detectors.co_detr'


def _without_plugin(code: str, tools_dir: Path) -> str:
    """Code run with ``-S``: site-packages is on sys.path but its ``.pth``
    files, which install the editable finder of the plugin, are not run. So
    mmengine & co. import while ``projects.codetr`` is "not installed"."""
    return (f'import sys\n'
            f'sys.path.append({sysconfig.get_paths()["purelib"]!r})\n'
            f'sys.path.insert(0, {str(tools_dir)!r})\n' + code)


IMPORT_PLUGIN = """
from _plugin import PluginImportError, import_plugin
try:
    import_plugin()
except PluginImportError as err:
    print(err)
    sys.exit(3)
"""


def test_missing_plugin_says_how_to_install(run_python, repo_root):
    proc = run_python(
        _without_plugin(IMPORT_PLUGIN, repo_root / 'tools'), flags=['-S'])
    assert proc.returncode == 3, proc.stderr
    assert 'not installed' in proc.stdout
    assert 'bash tools/install.sh' in proc.stdout
    assert 'pip install -e . --no-build-isolation --no-deps' in proc.stdout
    assert str(repo_root) in proc.stdout


def test_shadowing_projects_package_is_named(run_python, repo_root, tmp_path):
    (tmp_path / 'projects').mkdir()
    (tmp_path / 'projects' / '__init__.py').write_text('')
    proc = run_python(
        _without_plugin(IMPORT_PLUGIN, repo_root / 'tools'), flags=['-S'])
    assert proc.returncode == 3, proc.stderr
    assert str(tmp_path / 'projects' / '__init__.py') in proc.stdout
    assert 'namespace package' in proc.stdout


def test_opless_mmcv_is_reported(run_python, repo_root):
    # `None` in sys.modules makes `import mmcv._ext` fail as it does for an
    # mmcv built without ops.
    code = ("import sys\nsys.modules['mmcv._ext'] = None\n"
            f'sys.path.insert(0, {str(repo_root / "tools")!r})\n' +
            IMPORT_PLUGIN)
    proc = run_python(code)
    assert proc.returncode == 3, proc.stderr
    assert 'without its compiled ops (mmcv._ext)' in proc.stdout
    assert 'bash tools/install.sh' in proc.stdout


def test_projects_stays_a_namespace_package(repo_root):
    assert (repo_root / 'projects' / 'codetr' / '__init__.py').is_file()
    assert not (repo_root / 'projects' / '__init__.py').exists()


def _requirement_lines(path: Path) -> list:
    return [
        line.strip() for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith('#')
    ]


def test_requirements_never_pull_torch_or_an_isolated_mmcv(repo_root):
    # Only installs through `pip install -r`/install_requires are checked;
    # requirements/mmcv.txt is read by tools/install.sh, not by pip -r.
    pip_files = [
        repo_root / 'requirements.txt',
        repo_root / 'requirements' / 'runtime.txt',
        repo_root / 'requirements' / 'tests.txt'
    ]
    names = [
        re.split(r'[<>=!~\[; ]', line)[0].lower() for path in pip_files
        for line in _requirement_lines(path) if not line.startswith('-r')
    ]
    assert 'mmdet' in names and 'mmengine' in names
    assert 'torch' not in names
    assert 'mmcv' not in names


def test_mmcv_pin_is_accepted_by_mmdet(repo_root):
    from mmdet import mmcv_maximum_version, mmcv_minimum_version
    from mmengine.utils import digit_version
    pins = _requirement_lines(repo_root / 'requirements' / 'mmcv.txt')
    assert len(pins) == 1 and pins[0].startswith('mmcv==')
    pinned = digit_version(pins[0].split('==')[1])
    assert digit_version(mmcv_minimum_version) <= pinned
    assert pinned < digit_version(mmcv_maximum_version)


@pytest.mark.parametrize('script', ['tools/install.sh', '.ci/run'])
def test_shell_scripts_parse(script, repo_root):
    import subprocess
    proc = subprocess.run(['bash', '-n', str(repo_root / script)],
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr

"""The README stays true: its Python examples run, and its set-up commands are the CI's."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _expected_outputs():
    """Per python block, the ```text block after it ("prints ...") that shows its output."""
    follows = r"```python\n.*?```(?:\n\nprints[^\n]*\n\n```text\n(.*?)```)?"
    return [m.group(1) for m in re.finditer(follows, README.read_text(), flags=re.S)]


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_prints_what_it_shows(index, capsys):
    code, expected = _python_blocks()[index], _expected_outputs()[index]
    assert expected is not None, "each README example is followed by the output it prints"
    # As a user runs it: float32 (the test suite enables float64 in conftest).
    with jax.enable_x64(False):
        exec(compile(code, f"README.md[python block {index}]", "exec"), {})
    assert capsys.readouterr().out == expected


def test_setup_commands_are_one_line_each():
    text = README.read_text()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        block = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", text, flags=re.S)
        assert block, marker
        lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("pip install -e "), lines[0]

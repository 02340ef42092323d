"""The README section's examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"  # "Using specdec's verifiers in your own engine"


def test_readme_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "row 0: path [0, 1" in out and "PASS" in out and "target forwards for 32 tokens" in out

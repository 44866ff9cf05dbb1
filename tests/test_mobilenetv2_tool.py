"""tools/mobilenetv2_digits.py's step table on made-up rows of both flows: the fixed recipe's
steps carry val_acc, the latency search's val_score and measured ms (a search run once ended
in a KeyError here, after 20 minutes, before writing its JSON)."""

import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("mobilenetv2_digits")


def test_steps_of_both_flows_print(tool, capsys):
    tool.print_steps([
        dict(step="prune 0.5", params=10, macs=20, val_acc=0.97, kept=True),
        dict(step="1: merge block_2_add", params=9, macs=18, val_score=0.9635,
             measured_ms=0.0873, kept=True),
        dict(step="fuse (exact)", params=9, macs=18, val_score=None, kept=True)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert "0.9700" in lines[1] and "0.9635" in lines[2] and "0.0873" in lines[2]
    assert lines[3].split()[-3:] == ["-", "-", "yes"]

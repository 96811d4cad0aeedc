"""The family adapters: everything vidcache knows about a family lives in vidcache/models/, and
what a checkpoint's own config fixes wins over a preset's guess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidcache.cli import app
from vidcache.models import ADAPTERS, NAMES, adapter_of

ROOT = Path(__file__).resolve().parent.parent
# the same pattern as shared/hooks/before-stop: a family name next to == / != / in (...)
FAMILY_COMPARISON = re.compile(
    r"""(==|!=)[^#]*['"](wan|cogvideox|hunyuan\w*)['"]|['"](wan|cogvideox|hunyuan\w*)['"][^#]*(==|!=)"""
    r"""|in \([^)]*['"](wan|cogvideox|hunyuan\w*)['"]""")


def test_no_family_name_is_compared_outside_models():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
             for p in (ROOT / "vidcache").rglob("*.py") if "models" not in p.relative_to(ROOT).parts
             for n, line in enumerate(p.read_text().splitlines(), 1) if FAMILY_COMPARISON.search(line)]
    assert not found, "family knowledge belongs in vidcache/models/:\n" + "\n".join(found)


def test_every_adapter_names_real_diffusers_classes():
    import diffusers

    for adapter in ADAPTERS.values():
        assert adapter.cfg_layout in ("separate", "batched", "distilled")
        assert "t2v" in adapter.modes
        for cls in (*adapter.pipelines, *adapter.transformer_classes):
            assert hasattr(diffusers, cls), (adapter.name, cls)
    for name in NAMES.values():
        modes = ADAPTERS[name.family].modes
        assert name.mode in modes or (name.mode == "ti2v" and {"t2v", "i2v"} <= set(modes)), name


def test_adapters_describe_the_tiny_pipelines(tiny_dirs):
    from conftest import load_pipe

    for family in ("wan", "cogvideox", "hunyuan"):
        tr = load_pipe(tiny_dirs[family]).transformer
        adapter = adapter_of(tr)
        assert adapter.name == family
        blocks = adapter.blocks(tr)
        assert blocks and all(b is not None for _, b in blocks)
        kinds = {kind for _, _, kind in adapter.attention_modules(tr)}
        assert kinds <= {"spatial", "cross"} and "spatial" in kinds


@pytest.fixture(scope="module")
def learned_cogvideox(tmp_path_factory) -> str:
    from vidcache.tiny import build_tiny_cogvideox

    folder = tmp_path_factory.mktemp("cogvideox-learned") / "model"
    build_tiny_cogvideox(folder, learned_positions=True)
    return str(folder)


def test_text_length_comes_from_the_checkpoint(learned_cogvideox, tmp_path):
    """CogVideoX with positional embeddings for 16 text tokens: the family preset's 226 crashed
    ("size of tensor a (274) must match the size of tensor b (64)"); the folder's value wins."""
    import json

    r = CliRunner().invoke(app, ["gen", "--model", learned_cogvideox, "-p", "a red ball", "--frames", "9",
                                 "--height", "64", "--width", "64", "--steps", "2", "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("a-red-ball-*.json")]
    assert report["job"]["text_len"] == 16


def test_a_text_length_the_checkpoint_cannot_take_is_refused(learned_cogvideox, tmp_path):
    r = CliRunner().invoke(app, ["gen", "--model", learned_cogvideox, "-p", "a red ball", "--set",
                                 "defaults.text_len=20", "-o", str(tmp_path)])
    assert r.exit_code == 2
    assert "needs text_len 16" in r.output and "max_text_seq_length" in r.output
    assert not list(tmp_path.iterdir())


def test_docs_model_table_is_the_code_s_own():
    from vidcache.models.table import markdown

    doc = (ROOT / "docs" / "models.md").read_text()
    start, end = "<!-- model table: vidcache models --markdown -->\n", "<!-- end of model table -->"
    assert doc[doc.index(start) + len(start): doc.index(end)] == markdown()


def test_models_command_prints_modes_and_splits():
    import json

    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["wan-i2v"]["mode"] == "i2v" and rows["wan2.2-ti2v-5b"]["mode"] == "ti2v"
    assert "CFG-parallel" not in rows["hunyuan"]["splits"] and "CFG-parallel" in rows["cogvideox-5b-i2v"]["splits"]

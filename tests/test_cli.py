"""The llmlab command: help everywhere, exit codes, clear one-line errors, the models commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from llmlab.cli import build_parser, main


def test_import_llmlab_needs_no_torch():
    code = ("import sys, llmlab, llmlab.store, llmlab.recipes, llmlab.jobs, llmlab.cli, llmlab.runtime;"
            "llmlab.cli.build_parser(); [llmlab.recipes.STEPS[k].load_config() for k in llmlab.recipes.STEPS];"
            "bad = [m for m in ('torch', 'transformers', 'llama_cpp', 'mlflow', 'streamlit') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _subcommands(parser):
    for action in parser._subparsers._group_actions:
        yield from action.choices.items()


def test_help_everywhere(capsys):
    parser = build_parser()
    names = []
    for name, sub in _subcommands(parser):
        names.append(name)
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert {"run", "export-script", "build-demo", "score", "chat", "models", "jobs", "mlflow", "app"} <= set(names)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["build-demo", "--help"])
    assert "--size VALUE" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    home = ["--home", str(tmp_path / "models")]
    assert main([*home, "models", "show", "nope"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: No artifact named 'nope'") and "Traceback" not in err
    assert main([*home, "build-demo", "--name", "../evil", "--size", "micro"]) == 2
    assert "not a valid artifact name" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - build-demo:\n      sise: micro\n")
    assert main([*home, "run", str(bad)]) == 2
    assert "(line 4): unknown key 'sise'" in capsys.readouterr().err
    # A check across fields names the step, not a field (it used to crash on the empty field path).
    assert main([*home, "tune", "m", "--name", "x", "--method", "full", "--anchor", "world:tune:people"]) == 2
    assert "the 'tune' step: anchor needs a LoRA-type method" in capsys.readouterr().err
    assert main([*home, "run", str(tmp_path / "missing.yaml")]) == 3
    assert not (tmp_path / "evil").exists()


def test_models_add_ls_show_lineage_verify_rm(micro_model_dir, tmp_path, capsys):
    home = ["--home", str(tmp_path / "models")]
    assert main([*home, "models", "add", str(micro_model_dir), "--name", "mine"]) == 0
    assert capsys.readouterr().out.startswith("added mine (base, ")
    assert main([*home, "models", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["kind"]) for a in listed] == [("mine", "base")]
    assert main([*home, "models", "show", "mine"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["info"]["architecture"] == "LlamaForCausalLM"
    assert main([*home, "models", "lineage", "mine"]) == 0
    assert main([*home, "models", "verify"]) == 0
    weights = next((tmp_path / "models" / "mine").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    capsys.readouterr()
    assert main([*home, "models", "verify", "mine"]) == 4
    assert f"tampered file: {weights.name}" in capsys.readouterr().out
    assert main([*home, "models", "rm", "mine"]) == 0
    capsys.readouterr()
    assert main([*home, "models", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_models_add_refuses_bad_folders(micro_model_dir, tmp_path, capsys):
    home = ["--home", str(tmp_path / "models")]
    cut = tmp_path / "truncated"
    shutil.copytree(micro_model_dir, cut)
    weights = next(cut.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main([*home, "models", "add", str(cut)]) == 4
    assert "truncated or corrupt" in capsys.readouterr().err

    remote = tmp_path / "remote"
    shutil.copytree(micro_model_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Model"}}))
    assert main([*home, "models", "add", str(remote)]) == 2
    assert "needs its own Python code" in capsys.readouterr().err

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert main([*home, "models", "add", str(pickled)]) == 2
    assert "pickle weights (pytorch_model.bin)" in capsys.readouterr().err

    assert main([*home, "models", "add", str(tmp_path / "nowhere")]) == 3
    assert main([*home, "models", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_models_add_gguf_and_refuse_a_truncated_one(micro_gguf, tmp_path, capsys):
    home = ["--home", str(tmp_path / "models")]
    good = micro_gguf("f16")
    assert main([*home, "models", "add", str(good), "--name", "micro-f16"]) == 0
    assert "added micro-f16 (gguf, " in capsys.readouterr().out
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 1000])
    assert main([*home, "models", "add", str(cut)]) == 4
    err = capsys.readouterr().err
    assert "cut.gguf" in err and "Traceback" not in err
    assert main([*home, "models", "ls", "--json"]) == 0
    assert [a["name"] for a in json.loads(capsys.readouterr().out)] == ["micro-f16"]

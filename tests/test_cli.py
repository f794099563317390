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
    assert "PydanticUndefined" not in capsys.readouterr().out  # a default_factory's default is shown for real
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


def test_help_shows_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "PydanticUndefined" not in out
    assert "(not included in the output). (default: empty)" in out  # --stop: a list from a default_factory
    assert "(default: 256)" in out and "(default: none)" in out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(required)" not in capsys.readouterr().out  # source is the positional, not a flag


def test_string_flags_keep_their_text_other_flags_are_yaml(tmp_path, capsys):
    from llmlab.cli.flags import config_from_flags

    def flags(*argv):
        return config_from_flags(build_parser(argv[0]).parse_args(list(argv)))

    assert flags("serve", "X", "--host", "::", "--model-name", "007", "--api-key-env", "null", "--log-path", "no") == {
        "host": "::", "model_name": "007", "api_key_env": "null", "log_path": "no"}
    assert flags("serve", "X", "--port", "8001", "--log-prompts", "yes", "--n-ctx", "null") == {
        "port": 8001, "log_prompts": True, "n_ctx": None}
    assert flags("serve", "X", "--model-name", "none") == {"model_name": "none"}  # as before: the text
    assert flags("build-demo", "--name", "yes", "--size", "micro") == {"name": "yes", "size": "micro"}
    assert flags("chat", "m", "--stop", "[a, b]", "--seed", "7") == {"stop": ["a", "b"], "seed": 7}
    # `--host ::` reaches the server's own check (no API key), not a crash on {':': None} (exit 70)
    assert main(["--home", str(tmp_path / "models"), "serve", "X", "--host", "::"]) == 2
    assert "Refusing to listen on :: without an API key" in capsys.readouterr().err


def _run_into_closed_pipe(*argv):
    code = "import sys; from llmlab.cli import main; sys.exit(main())"
    p = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader goes away before anything is written, as `| head -0` would
    err = p.stderr.read().decode()
    return p.wait(timeout=60), err


def test_closed_pipe_ends_quietly(tmp_path):
    from llmlab.store import Store

    with Store(tmp_path / "models").write("a", "base") as w:
        (w.path / "weights.txt").write_text("w")
    home = ["--home", str(tmp_path / "models")]
    for argv in (["models", "show", "a"], ["models", "ls"], ["models", "lineage", "a"]):
        rc, err = _run_into_closed_pipe(*home, *argv)
        assert (rc, err) == (141, ""), (argv, rc, err)


def test_whole_store_verify_reports_unreadable_and_edited_artifacts(tmp_path, capsys):
    from llmlab.store import Store, sha256_file

    store = Store(tmp_path / "models")
    for name in ("a", "b", "c"):
        with store.write(name, "base") as w:
            (w.path / "weights.txt").write_text(name)
    home = ["--home", str(store.root)]
    (store.root / "leaderboard.md").write_text("a file at the root is not an artifact")
    (store.root / ".cache" / "x").mkdir(parents=True)
    assert main([*home, "models", "verify"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == ["a: ok", "b: ok", "c: ok"]
    (store.root / "b" / "manifest.json").write_text("{not json")
    (store.root / "stray").mkdir()
    weights = store.root / "c" / "weights.txt"
    weights.write_text("edited")
    manifest = json.loads((store.root / "c" / "manifest.json").read_text())
    manifest["files"]["weights.txt"] = sha256_file(weights)  # the file and its sha256 both edited
    (store.root / "c" / "manifest.json").write_text(json.dumps(manifest))
    assert main([*home, "models", "verify"]) == 4
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a: ok" and out[1].startswith("b: unreadable: The manifest of 'b'") and "corrupted" in out[1]
    assert out[2] == "c: content hash differs from the manifest's files (the manifest was edited)"
    assert out[3].startswith("stray: unreadable: no manifest.json") and len(out) == 4
    assert main([*home, "models", "verify", "c"]) == 4


@pytest.mark.parametrize("command", ["app", "mlflow"])
def test_app_and_mlflow_refuse_a_non_loopback_host_without_expose(command, tmp_path, monkeypatch, capsys):
    from llmlab import tracking

    started = []
    monkeypatch.setattr(subprocess, "call", lambda argv: started.append(argv) or 0)
    monkeypatch.setattr(tracking, "ui_command", lambda host, port: ["mlflow", "ui", "--host", host])
    home = ["--home", str(tmp_path / "models")]
    for host in ("0.0.0.0", "::", "192.0.2.7"):
        assert main([*home, command, "--host", host]) == 2
        err = capsys.readouterr().err
        assert f"Refusing to listen on {host}: " in err and "Pass --expose" in err
    assert started == []
    for host in ("127.0.0.1", "localhost", "::1"):
        assert main([*home, command, "--host", host]) == 0
    assert main([*home, command, "--host", "0.0.0.0", "--expose"]) == 0
    assert len(started) == 4 and all(host in argv for host, argv in
                                     zip(("127.0.0.1", "localhost", "::1", "0.0.0.0"), started))

"""The pi-min command: main(argv) exit codes and output, and real subprocess runs."""

import json
import os
import shutil
import signal as signals
import subprocess
import sys
import time

import pytest

import pi_min
from loopback import Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAM = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
          b'data: {"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
          b'data: {"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":"stop"}]}\n\n'
          b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
          b"data: [DONE]\n\n")
KEY = "gsk_cli_secret_0123456789abcdef"


def groq_models_json(agent_dir, server):
    (agent_dir / "models.json").write_text(json.dumps(
        {"providers": {"groq": {"baseUrl": server.url + "/openai/v1"}}}))


def cli(*args, env=None, stdin=None, cwd=ROOT, script=None, flags=("-I",)):
    script = script or os.path.join(ROOT, "pi_min.py")
    return subprocess.run([sys.executable, *flags, script, *args], capture_output=True, text=True,
                          env=env if env is not None else dict(os.environ), input=stdin, cwd=cwd, timeout=60)


def test_faux_needs_no_key_and_no_network(capsys):
    assert pi_min.main(["--provider", "faux", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "You said: hi\n"


def test_unknown_provider_exits_2_with_a_suggestion(capsys):
    assert pi_min.main(["--provider", "gorq", "hi"]) == 2
    err = capsys.readouterr().err
    assert "unknown provider" in err and "groq" in err and "Traceback" not in err


def test_missing_key_exits_2_naming_the_env_var(capsys):
    assert pi_min.main(["--provider", "groq", "hi"]) == 2
    assert "GROQ_API_KEY" in capsys.readouterr().err


def test_family_not_built_yet_exits_2_before_stdin_or_chat(capsys, monkeypatch, isolated_env):
    def must_not_run(*args):
        raise AssertionError("reached stdin or the chat")
    monkeypatch.setattr(pi_min, "_cli_stdin", must_not_run)
    monkeypatch.setattr(pi_min, "_chat", must_not_run)
    monkeypatch.setattr(pi_min, "_stdin_is_tty", lambda: True)
    (isolated_env / "models.json").write_text(json.dumps({"providers": {
        "my-own": {"api": "imaginary-api", "baseUrl": "http://127.0.0.1:9", "models": [{"id": "m"}]},
        "my-auth": {"api": "openai-completions", "auth": "telepathy", "baseUrl": "http://127.0.0.1:9",
                    "models": [{"id": "m"}]}}}))
    for argv, what in ((["--provider", "my-own", "hi"], "my-own: the imaginary-api API family"),
                       (["--provider", "my-own"], "my-own: the imaginary-api API family"),
                       (["-m", "my-auth/m"], "my-auth: telepathy authentication")):
        assert pi_min.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("pi-min: " + what) and "not built yet" in err and err.count("\n") == 1


def test_bad_flags_exit_2(capsys):
    assert pi_min.main(["--no-such-flag"]) == 2
    assert pi_min.main(["--provider", "faux", "--thinking", "max", "hi"]) == 2
    assert pi_min.main(["--provider", "faux"]) == 2  # no prompt and stdin is not a terminal
    assert pi_min.main(["--provider", "faux", "--image", "missing.png", "hi"]) == 2


def test_version_and_list_providers(capsys):
    assert pi_min.main(["--version"]) == 0
    assert pi_min.__version__ in capsys.readouterr().out
    assert pi_min.main(["--list-providers"]) == 0
    out = capsys.readouterr().out
    groq = next(line for line in out.splitlines() if line.startswith("groq "))
    assert "openai-completions" in groq and "GROQ_API_KEY" in groq
    assert pi_min.get_model("groq")["id"] in groq
    moonshot = next(line for line in out.splitlines() if line.startswith("moonshotai "))
    assert moonshot.endswith("aliases: kimi, moonshot")
    assert "(planned)" not in next(line for line in out.splitlines() if line.startswith("github-copilot "))
    assert "(planned)" not in next(line for line in out.splitlines() if line.startswith("amazon-bedrock "))
    assert "(planned)" not in next(line for line in out.splitlines() if line.startswith("anthropic "))
    assert len(out.splitlines()) == len(pi_min.list_providers()) + 1


def test_json_lines_without_partial(capsys):
    assert pi_min.main(["--provider", "faux", "--json", "hi"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "done"
    assert all("partial" not in e for e in lines)
    assert lines[-1]["message"]["content"][0]["text"] == "You said: hi"


def test_usage_and_thinking_go_to_stderr(capsys, isolated_env):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"faux": {"models": [
        {"id": "faux-1", "faux": {"thinking": "pondering", "text": "answer"},
         "cost": {"input": 1000000, "output": 1000000}}]}}}))
    assert pi_min.main(["--provider", "faux", "-u", "q"]) == 0
    out = capsys.readouterr()
    assert out.out == "answer\n"
    assert "pondering" in out.err and "usage:" in out.err and "cost $" in out.err


def test_provider_and_model_defaults_from_env_and_settings(capsys, isolated_env, monkeypatch):
    (isolated_env / "settings.json").write_text(json.dumps({"defaultProvider": "demo", "default_model": "faux-1"}))
    assert pi_min.main(["hi"]) == 0
    assert capsys.readouterr().out == "You said: hi\n"
    monkeypatch.setenv("PI_PROVIDER", "groq")
    assert pi_min.main(["hi"]) == 2  # groq from the env, no key: the settings model is not reused
    assert "GROQ_API_KEY" in capsys.readouterr().err
    assert pi_min.main(["--provider", "faux", "hi"]) == 0


def test_dash_m_names_a_provider_defined_only_in_models_json(capsys, isolated_env, server):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"my-vllm": {
        "baseUrl": server.url + "/v1", "api": "openai-completions", "models": [{"id": "qwen3-8b"}]}}}))
    server.script([Reply(body=STREAM)])
    assert pi_min.main(["-m", "my-vllm/qwen3-32b", "hi"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "Hello there\n"
    assert server.requests[0].json["model"] == "qwen3-32b"


def test_no_provider_anywhere_exits_2(capsys):
    assert pi_min.main(["hi"]) == 2
    assert "--provider" in capsys.readouterr().err


def test_provider_failure_exits_1_with_status_and_message(capsys, server):
    server.script([Reply(503, {"Content-Type": "application/json", "Retry-After": "0"},
                         b'{"error":{"message":"upstream is down"}}')] * 3)
    code = pi_min.main(["--provider", "groq", "--base-url", server.url, "--api-key", KEY, "hi"])
    assert code == 1
    err = capsys.readouterr().err
    assert "503" in err and "upstream is down" in err and KEY not in err
    assert len(err.strip().splitlines()) == 1


def test_isolated_subprocess_streams_from_models_json_base_url(isolated_env, server):
    groq_models_json(isolated_env, server)
    server.script([Reply(body=STREAM, mode="chunked", split=True)])
    run = cli("--provider", "groq", "hi", env=dict(os.environ, GROQ_API_KEY=KEY))
    assert run.returncode == 0, run.stderr
    assert run.stdout == "Hello there\n"
    req = server.requests[0]
    assert req.path == "/openai/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer " + KEY
    assert req.json["messages"] == [{"role": "user", "content": "hi"}]


def test_isolated_subprocess_without_key_exits_2(isolated_env, server):
    groq_models_json(isolated_env, server)
    run = cli("--provider", "groq", "hi")
    assert run.returncode == 2
    assert "GROQ_API_KEY" in run.stderr and "Traceback" not in run.stderr
    assert server.requests == []


def test_isolated_subprocess_401_exits_1_without_traceback_or_key(isolated_env, server):
    groq_models_json(isolated_env, server)
    server.script([Reply(401, {"Content-Type": "application/json"}, json.dumps(
        {"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}))])
    run = cli("--provider", "groq", "hi", env=dict(os.environ, GROQ_API_KEY=KEY))
    assert run.returncode == 1
    assert "401" in run.stderr and "Invalid API Key" in run.stderr
    assert "Traceback" not in run.stderr and KEY not in run.stderr + run.stdout
    assert len(server.requests) == 1  # 401 is not retried


def test_piped_stdin_is_joined_with_the_prompt(isolated_env):
    run = cli("--provider", "faux", "review this", stdin="print('hi')\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "You said: print('hi')\nreview this\n"


def test_two_files_copied_anywhere_run_with_bare_python(tmp_path):
    for name in ("pi_min.py", "providers_table.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PI_CODING_AGENT_DIR": str(tmp_path / "a")}
    run = cli("--provider", "faux", "hi", env=env, cwd=tmp_path, script=str(tmp_path / "pi_min.py"),
              flags=("-I", "-S"))
    assert (run.returncode, run.stdout) == (0, "You said: hi\n"), run.stderr
    run = subprocess.run([sys.executable, "-I", "-S", "-c",
                          "import sys; sys.path.insert(0, '.'); import pi_min; "
                          "print(pi_min.complete('demo', 'yo')['content'][0]['text'])"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert run.stdout == "You said: yo\n", run.stderr


DECOY_TABLE = "PROVIDERS = {'decoy': {}}\nALIASES = {}\nMODELS = {}\n"
VENDOR_CHECK = """
import os, sys
sys.path[:0] = %(path)r
if %(decoy_first)s:
    import providers_table as decoy  # the app's own top-level module, imported first
%(import_pi_min)s
table = pi_min._table()
print(table.__file__ == os.path.join(os.path.dirname(pi_min.__file__), 'providers_table.py'))
print(pi_min.get_model('kimi')['provider'], 'decoy' in pi_min.list_providers())
print(pi_min.complete('demo', 'yo')['content'][0]['text'])
if not %(decoy_first)s:
    print('providers_table' in sys.modules)
    import providers_table as decoy
print(sorted(decoy.PROVIDERS), os.path.abspath(decoy.__file__) == os.path.abspath(%(decoy)r))
"""


@pytest.mark.parametrize("decoy_first", [False, True])
@pytest.mark.parametrize("vendored", [True, False])
def test_copies_load_their_own_table_never_a_top_level_one(tmp_path, vendored, decoy_first):
    # vendored: myapp/_vendor/{__init__,pi_min,providers_table}.py beside someone else's top-level
    # providers_table.py; else the two files copied into app/ with the other module first on sys.path
    if vendored:
        home, decoy = tmp_path / "myapp" / "_vendor", tmp_path / "providers_table.py"
        home.mkdir(parents=True)
        for package in (home.parent, home):
            (package / "__init__.py").write_text("")
        path, import_pi_min = ["."], "from myapp._vendor import pi_min"
    else:
        home, decoy = tmp_path / "app", tmp_path / "other" / "providers_table.py"
        home.mkdir()
        decoy.parent.mkdir()
        path, import_pi_min = ["other", "app"], "import pi_min"
    for name in ("pi_min.py", "providers_table.py"):
        shutil.copy(os.path.join(ROOT, name), home / name)
    decoy.write_text(DECOY_TABLE)
    code = VENDOR_CHECK % {"path": path, "decoy_first": decoy_first, "import_pi_min": import_pi_min,
                           "decoy": str(decoy)}
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PI_CODING_AGENT_DIR": str(tmp_path / "a")}
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    expected = ["True", "moonshotai False", "You said: yo"] + ([] if decoy_first else ["False"])
    assert run.stdout.splitlines() == expected + ["['decoy'] True"], run.stderr
    assert decoy.read_text() == DECOY_TABLE


def test_license_spdx_lines_and_the_test_extra():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        license_text = f.read()
    assert license_text.startswith("MIT License\n") and "Copyright (c) 2026 pi_min contributors" in license_text
    for name in ("pi_min.py", "providers_table.py"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert f.readline() == "# SPDX-License-Identifier: MIT\n", name
    assert pi_min.__doc__.startswith("pi_min: ")  # the comment line does not hide the docstring
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    assert '\ntest = ["pytest>=7"]\n' in pyproject and '\ndev = ["pytest>=7", "ruff", "mypy"' in pyproject
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "python -m pip install -e '.[test]' && python -m pytest -q" in f.read()


def test_import_loads_only_the_standard_library():
    code = ("import sys, sysconfig; before = set(sys.modules); sys.path.insert(0, %r); import pi_min; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "std = getattr(sys, 'stdlib_module_names', None); lib = sysconfig.get_paths()['stdlib']; "
            "is_std = (lambda m: m in std) if std else (lambda m: (getattr(sys.modules[m], '__file__', None) "
            "or lib).startswith(lib)); "
            "print(sorted(m for m in new if m != 'pi_min' and not is_std(m)))" % ROOT)
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr
    code = ("import sys; sys.path.insert(0, %r); import pi_min; "
            "print('providers_table' in sys.modules, 'ssl' in sys.modules, 'socket' in sys.modules)" % ROOT)
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False False False"  # nothing heavy at import time


def test_python_dash_m_works(isolated_env):
    run = subprocess.run([sys.executable, "-m", "pi_min", "--provider", "faux", "hi"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert (run.returncode, run.stdout) == (0, "You said: hi\n"), run.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_exits_130(isolated_env, server):
    groq_models_json(isolated_env, server)
    first = b'data: {"choices":[{"index":0,"delta":{"content":"partial"},"finish_reason":null}]}\n\n'
    server.script([Reply(body=first, mode="chunked", hang=True)])
    proc = subprocess.Popen([sys.executable, "-I", os.path.join(ROOT, "pi_min.py"), "--provider", "groq", "hi"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, GROQ_API_KEY=KEY))
    try:
        deadline = time.monotonic() + 20
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signals.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert out.startswith("partial") and "Traceback" not in err


def test_image_flag_sends_the_image(capsys, server, tmp_path):
    png = tmp_path / "dot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    server.script([Reply(body=STREAM)])
    code = pi_min.main(["--provider", "groq", "--base-url", server.url, "--api-key", KEY,
                        "--image", str(png), "what is this?"])
    assert code == 0
    parts = server.requests[0].json["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    import base64
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert "not listed as accepting images" in capsys.readouterr().err


def test_thinking_on_a_model_not_listed_as_reasoning_says_it_is_ignored(capsys, server):
    server.script([Reply(body=STREAM)])
    argv = ["--provider", "groq", "-m", "brand-new", "--base-url", server.url, "--api-key", KEY, "--thinking", "high"]
    assert pi_min.main(argv + ["hi"]) == 0
    assert "brand-new is not listed as a reasoning model, so --thinking is ignored" in capsys.readouterr().err
    assert "reasoning_effort" not in server.requests[0].json


def test_ascii_console_does_not_crash(isolated_env):
    run = cli("--provider", "faux", "h\u00e9llo \U0001F642", env=dict(os.environ, PYTHONIOENCODING="ascii"),
              flags=())
    assert run.returncode == 0, run.stderr
    assert run.stdout == "You said: h?llo ?\n"

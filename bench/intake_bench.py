"""Intake vs. bare Starlette, same server settings, same load generator, same run.

    .venv/bin/python bench/intake_bench.py [--rounds N] [--duration S] [--connections 64]
                                           [--dispatch] [--sign hmac-sha256] [--profile]

Each round starts (a) a bare Starlette POST endpoint (bench/bare_app.py) and then (b) the full
taskhook intake (verify + durable SQLite group commit + dedup + ack), each as its own uvicorn
subprocess through bench/serve.py, so both get identical uvicorn settings. Each server is
warmed up briefly, loaded with `wrk` for --duration seconds, and stopped. Every request
carries a distinct ~1.5 KB Refonte task callback (unique task_id), signed for the configured
source, so (b) stores a new row per request rather than measuring dedup.

Printed: per round and server deliveries/s, p50 and p99; then medians across rounds, the ratio
b/a of the medians (and per round) and whether the target holds (ratio >= 0.7 with the
intake's p99 <= 20 ms). A run with any non-200 response or socket error is invalid (exit 1).
After each (b) run the rows stored in SQLite for that run are counted and compared with the
200s wrk saw (wrk stops with up to --connections requests in flight, so stored may exceed
the 200s by that much, never fall short). Results also go to bench/results/intake-<ts>.json.

--profile adds one extra, unscored (b) run sampled by py-spy (``pip install py-spy`` into the
venv) and prints where the server's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

SOURCE = "refonte"
PATH = f"/callbacks/{SOURCE}"
SECRET = "bench-secret"
HEADERS = {"header-token": "refonte-callback-auth", "hmac-sha256": "x-signature-sha256"}
PLACEHOLDER = "@@TASK_ID@@"
ID_PREFIX = "65f0"  # task ids: 65f0 + 6 hex run tag + 2 hex wrk thread + 12 hex counter
TARGET_RATIO = 0.7
TARGET_P99_MS = 20.0

SERVERS = {"a": "bare", "b": "intake"}


# --- the load ------------------------------------------------------------------------------


def body_template() -> str:
    """A ~1.5 KB compact Refonte task callback (the shape of shared/samples/refonte/05-*)
    with `PLACEHOLDER` where the task id goes (twice: top level and ``task.task_id``)."""
    annotations = [
        {
            "uuid": f"a{i}",
            "label": label,
            "left": 10 + 37 * i,
            "top": 20 + 11 * i,
            "width": 50 + i,
            "height": 30 + i,
            "geometry": "box",
        }
        for i, label in enumerate(["vehicle", "pedestrian", "cyclist", "vehicle"])
    ]
    response = {"annotations": annotations}
    body = {
        "task_id": PLACEHOLDER,
        "status": "completed",
        "response": response,
        "task": {
            "task_id": PLACEHOLDER,
            "type": "imageannotation",
            "created_at": "2024-03-01T10:00:00.000Z",
            "completed_at": "2024-03-01T12:00:00.000Z",
            "project": "street_scenes",
            "batch": "street_scenes_2024-03",
            "instruction": "Label every object in this image",
            "params": {
                "attachment": "https://example.com/images/street/s-17/frame-0001.jpg",
                "geometries": {
                    "box": {"objects_to_annotate": ["vehicle", "pedestrian", "cyclist"]}
                },
            },
            "metadata": {"scene": "s-17", "frame": 1, "camera": "front-left"},
            "tags": ["experiment_1"],
            "unique_id": "street/s-17/frame-0001.jpg",
            "callback_url": "https://hooks.example.com/callbacks/refonte",
            "status": "completed",
            "response": response,
            "updated_at": "2024-03-01T12:00:00.000Z",
            "audits": [],
            "callback_completed": False,
        },
    }
    return json.dumps(body, separators=(",", ":"))


def sample_body(task_id: str) -> bytes:
    return body_template().replace(PLACEHOLDER, task_id).encode()


def lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(sign: str) -> str:
    """The wrk script: a distinct signed body per request, non-200s counted, JSON summary."""
    from receiver.verify import sign_header_token, sign_hmac_sha256

    parts = body_template().split(PLACEHOLDER)
    assert len(parts) == 3
    header = HEADERS[sign]
    headers = {"content-type": "application/json"}
    hmac_block = ""
    if sign == "header-token":
        headers |= sign_header_token(SECRET, header=header)
    else:
        # LuaJIT's FFI calls the libcrypto wrk itself links; checked at load time against the
        # project's own signer so a mismatch stops wrk instead of producing 401s.
        probe = sample_body(ID_PREFIX + "0" * 20)
        expected = sign_hmac_sha256(probe, SECRET, header=header)[header]
        hmac_block = f"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
]]
local ok, crypto = pcall(ffi.load, "crypto")
if not ok then crypto = ffi.load("libcrypto.so.3") end
local SHA256 = crypto.EVP_sha256()
local md = ffi.new("unsigned char[32]")
local md_len = ffi.new("unsigned int[1]")
local HEX = {{}}
for i = 0, 255 do HEX[i] = string.format("%02x", i) end
local hexbuf = {{}}
function sign_body(body)
  crypto.HMAC(SHA256, SECRET, #SECRET, body, #body, md, md_len)
  for i = 0, 31 do hexbuf[i + 1] = HEX[md[i]] end
  return "sha256=" .. table.concat(hexbuf)
end
local probe_sig = sign_body({lua_string(probe.decode())})
if probe_sig ~= {lua_string(expected)} then
  error("Lua HMAC-SHA256 disagrees with receiver.verify.sign_hmac_sha256: " .. probe_sig)
end
"""
    header_lines = "\n".join(
        f"  [ {lua_string(k)} ] = {lua_string(v)}," for k, v in sorted(headers.items())
    )
    sign_line = ""
    if sign != "header-token":
        sign_line = f"headers[ {lua_string(header)} ] = sign_body(body)"
    return f"""-- generated by bench/intake_bench.py; args: <run tag (6 hex)>
local P1 = {lua_string(parts[0])}
local P2 = {lua_string(parts[1])}
local P3 = {lua_string(parts[2])}
local PATH = {lua_string(PATH)}
SECRET = {lua_string(SECRET)}
{hmac_block}
local headers = {{
{header_lines}
}}

local threads = {{}}
function setup(thread)
  thread:set("thread_no", #threads + 1)
  table.insert(threads, thread)
end

local prefix = ""
local counter = 0
non200 = 0
codes = {{}}

function init(args)
  prefix = {lua_string(ID_PREFIX)} .. args[1] .. string.format("%02x", thread_no)
end

function request()
  counter = counter + 1
  local id = prefix .. string.format("%012x", counter)
  local body = P1 .. id .. P2 .. id .. P3
  {sign_line}
  return wrk.format("POST", PATH, headers, body)
end

function response(status, hdrs, body)
  if status ~= 200 then
    non200 = non200 + 1
    local key = tostring(status)
    codes[key] = (codes[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  local all = {{}}
  for _, t in ipairs(threads) do
    bad = bad + t:get("non200")
    for k, v in pairs(t:get("codes")) do all[k] = (all[k] or 0) + v end
  end
  local parts = {{}}
  for k, v in pairs(all) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {{"duration_us":%d,"requests":%d,"bytes":%d,"non200":%d,"codes":{{%s}},' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}}\\n',
    summary.duration, summary.requests, summary.bytes, bad, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


# --- tools ---------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not on PATH; installing the Debian package (apt-get install -y wrk) ...")
    install = ["apt-get", "install", "-y", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(
            f"could not install wrk ({exc}). This benchmark needs wrk, the HTTP load "
            "generator: install it as root with `apt-get update && apt-get install -y wrk` "
            "(Debian/Ubuntu) or put a wrk binary on PATH, then run again."
        )
    found = shutil.which("wrk")
    if not found:
        sys.exit("apt-get reported success but wrk is still not on PATH")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def write_config(workdir: Path, db: Path, *, sign: str, dispatch: bool) -> Path:
    config = workdir / "bench.toml"
    config.write_text(
        f"""[database]
url = "sqlite:///{db}"

[sources.{SOURCE}]
kind = "refonte"
verify = "{sign}"
header = "{HEADERS[sign]}"
secrets = ["{SECRET}"]

[dispatch]
enabled = {"true" if dispatch else "false"}

[log]
level = "warning"
""",
        encoding="utf-8",
    )
    return config


def start_server(kind: str, workdir: Path, config: Path | None) -> Server:
    port = free_port()
    cmd = [sys.executable, str(BENCH / "serve.py"), kind, "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    log_path = workdir / f"server-{kind}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = Server(kind, port, proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            conn.getresponse().read()  # any answer at all: uvicorn is up, lifespan done
            conn.close()
            return server
        except OSError:
            time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"{kind} server did not answer within 30 s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def scrape(server: Server) -> dict[str, float]:
    """The intake's commit histograms' sums and counts from /metrics (b only)."""
    wanted = (
        "taskhook_commit_batch_size_sum",
        "taskhook_commit_batch_size_count",
        "taskhook_commit_seconds_sum",
        "taskhook_commit_seconds_count",
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


# --- one measurement -----------------------------------------------------------------------


@dataclass
class Load:
    wrk: str
    script: Path
    connections: int
    threads: int
    timeout: str
    used_tags: set[str] = field(default_factory=set)

    def new_tag(self) -> str:
        while (tag := secrets.token_hex(3)) in self.used_tags:
            pass
        self.used_tags.add(tag)
        return tag

    def run(self, url: str, duration: float, tag: str) -> dict[str, Any]:
        cmd = [
            self.wrk,
            "-t",
            str(self.threads),
            "-c",
            str(self.connections),
            "-d",
            f"{duration:g}s",
            "--timeout",
            self.timeout,
            "-s",
            str(self.script),
            url,
            "--",
            tag,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH_RESULT "):
                result: dict[str, Any] = json.loads(line[len("BENCH_RESULT ") :])
                return result
        raise RuntimeError(
            f"wrk gave no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


@dataclass
class Measurement:
    round: int
    server: str  # "a" or "b"
    tag: str
    rps: float
    ok: int
    p50_ms: float
    p99_ms: float
    wrk: dict[str, Any]
    errors: int
    stored: int | None = None
    stored_duplicates: int | None = None
    stored_quarantined: int | None = None
    avg_commit_batch: float | None = None
    avg_commit_ms: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def count_stored(db: Path, tag: str) -> tuple[int, int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(duplicate_of IS NOT NULL), 0), "
            "coalesce(sum(status = 'quarantined'), 0) FROM deliveries WHERE task_id LIKE ?",
            (f"{ID_PREFIX}{tag}%",),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1]), int(row[2])


def measure(
    load: Load,
    kind: str,
    round_no: int,
    *,
    workdir: Path,
    duration: float,
    warmup: float,
    sign: str,
    dispatch: bool,
) -> Measurement:
    letter = "a" if kind == "bare" else "b"
    rundir = workdir / f"round{round_no}-{letter}"
    rundir.mkdir()
    db = rundir / "bench.db"
    config = write_config(rundir, db, sign=sign, dispatch=dispatch) if kind == "intake" else None
    server = start_server(kind, rundir, config)
    try:
        if warmup > 0:
            load.run(server.url, warmup, load.new_tag())
        before = scrape(server) if kind == "intake" else {}
        tag = load.new_tag()
        result = load.run(server.url, duration, tag)
        after = scrape(server) if kind == "intake" else {}
    finally:
        stop_server(server)
    seconds = result["duration_us"] / 1e6
    ok = result["requests"] - result["non200"]
    socket_errors = sum(
        result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    m = Measurement(
        round=round_no,
        server=letter,
        tag=tag,
        rps=ok / seconds,
        ok=ok,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        wrk=result,
        errors=result["non200"] + socket_errors,
    )
    if result["non200"]:
        m.problems.append(f"{result['non200']} non-200 responses {result['codes']}")
    if socket_errors:
        m.problems.append(
            "socket errors: "
            + ", ".join(
                f"{k}={result[k]}"
                for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
                if result[k]
            )
        )
    if server.proc.returncode not in (0, None):
        m.problems.append(f"server exited with {server.proc.returncode}: {server.log_tail(5)}")
    if kind == "intake":
        m.stored, m.stored_duplicates, m.stored_quarantined = count_stored(db, tag)
        if m.stored < ok:
            m.problems.append(f"only {m.stored} rows stored for {ok} acknowledged deliveries")
        elif m.stored - ok > load.connections:
            m.problems.append(
                f"{m.stored - ok} more rows than 200s (more than {load.connections} in flight)"
            )
        if m.stored_duplicates or m.stored_quarantined:
            m.problems.append(
                f"{m.stored_duplicates} duplicate and {m.stored_quarantined} quarantined rows"
            )
        commits = after.get("taskhook_commit_batch_size_count", 0) - before.get(
            "taskhook_commit_batch_size_count", 0
        )
        if commits > 0:
            rows = after["taskhook_commit_batch_size_sum"] - before.get(
                "taskhook_commit_batch_size_sum", 0
            )
            secs = after["taskhook_commit_seconds_sum"] - before.get(
                "taskhook_commit_seconds_sum", 0
            )
            m.avg_commit_batch = rows / commits
            m.avg_commit_ms = secs / commits * 1000
    return m


def describe(m: Measurement, rounds: int) -> str:
    name = f"{m.server} {SERVERS[m.server]:<6}"
    line = (
        f"round {m.round}/{rounds}  {name}  {m.rps:>8,.0f} deliveries/s  "
        f"p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  ({m.ok:,} x 200, {m.errors} errors)"
    )
    if m.stored is not None:
        line += f"  stored {m.stored:,} (+{m.stored - m.ok} in flight at cut-off)"
    if m.avg_commit_batch is not None and m.avg_commit_ms is not None:
        line += f"  commit: {m.avg_commit_batch:.1f} rows in {m.avg_commit_ms:.2f} ms avg"
    if m.problems:
        line += "  INVALID: " + "; ".join(m.problems)
    return line


# --- profiling -----------------------------------------------------------------------------


def profile_intake(
    load: Load, *, workdir: Path, duration: float, sign: str, dispatch: bool, out: Path
) -> dict[str, Any] | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("--profile needs py-spy: .venv/bin/pip install py-spy")
        return None
    rundir = workdir / "profile"
    rundir.mkdir()
    db = rundir / "bench.db"
    server = start_server("intake", rundir, write_config(rundir, db, sign=sign, dispatch=dispatch))
    try:
        load.run(server.url, 1, load.new_tag())
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(server.proc.pid),
                "--duration",
                f"{int(duration)}",
                "--rate",
                "200",
                "--threads",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)
        result = load.run(server.url, duration, load.new_tag())
        spy_out = spy.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        stop_server(server)
    if not out.exists():
        print(f"py-spy produced nothing:\n{spy_out}")
        return None
    summary = summarize_profile(out)
    summary["rps_while_profiled"] = (result["requests"] - result["non200"]) / (
        result["duration_us"] / 1e6
    )
    return summary


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Sample shares per thread, then per function (self and inclusive) within each thread,
    from py-spy's raw (collapsed) output. Time inside C code (SQLite, syscalls, uvloop) is
    charged to the Python function that called it."""
    per_thread: Counter[str] = Counter()
    self_time: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(\d+\)", "", frames[0])
        names = [_frame_name(f) for f in frames[1:]]
        per_thread[thread] += count
        if names:
            self_time.setdefault(thread, Counter())[names[-1]] += count
        for name in set(names):
            inclusive.setdefault(thread, Counter())[name] += count
    total = sum(per_thread.values())

    def shares(counter: Counter[str], of: int) -> list[tuple[str, float]]:
        return [(k, 100 * v / of) for k, v in counter.most_common(top)] if of else []

    return {
        "samples": total,
        "threads": [
            {
                "thread": thread,
                "samples": n,
                "share": 100 * n / total,
                "self": shares(self_time.get(thread, Counter()), n),
                "inclusive": shares(inclusive.get(thread, Counter()), n),
            }
            for thread, n in per_thread.most_common()
        ],
    }


def print_profile(summary: dict[str, Any]) -> None:
    print(
        f"\nprofile of (b) under load: {summary['samples']} samples (py-spy, non-idle threads), "
        f"{summary['rps_while_profiled']:,.0f} deliveries/s while sampled"
    )
    for thread in summary["threads"]:
        print(
            f"  == {thread['thread']}: {thread['share']:.1f}% of samples "
            "(% below are of this thread's samples)"
        )
        for title in ("self", "inclusive"):
            print(f"    -- {title}")
            for name, share in thread[title]:
                print(f"    {share:5.1f}%  {name}")


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Bare Starlette (a) vs. full taskhook intake (b), same settings and load."
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", default="2s", help="wrk per-request timeout")
    parser.add_argument("--dispatch", action="store_true", help="run (b) with dispatch enabled")
    parser.add_argument("--sign", choices=sorted(HEADERS), default="header-token")
    parser.add_argument("--profile", action="store_true", help="extra py-spy'd (b) run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="taskhook-bench-"))
    script = workdir / "load.lua"
    script.write_text(lua_script(args.sign), encoding="utf-8")
    load = Load(wrk, script, args.connections, args.threads, args.timeout)
    body_bytes = len(sample_body(ID_PREFIX + "0" * 20))
    started = datetime.now(UTC)
    print(
        f"taskhook intake benchmark: {args.rounds} rounds x {args.duration:g} s "
        f"(+{args.warmup:g} s warm-up), wrk -t{args.threads} -c{args.connections}, "
        f"{body_bytes} B bodies signed {args.sign}, dispatch "
        f"{'on' if args.dispatch else 'off'}, {os.cpu_count()} CPUs"
    )

    measurements: list[Measurement] = []
    profile: dict[str, Any] | None = None
    try:
        for round_no in range(1, args.rounds + 1):
            for kind in ("bare", "intake"):
                m = measure(
                    load,
                    kind,
                    round_no,
                    workdir=workdir,
                    duration=args.duration,
                    warmup=args.warmup,
                    sign=args.sign,
                    dispatch=args.dispatch,
                )
                measurements.append(m)
                print(describe(m, args.rounds), flush=True)
        if args.profile:
            RESULTS.mkdir(exist_ok=True)
            stamp = started.strftime("%Y%m%d-%H%M%S")
            profile = profile_intake(
                load,
                workdir=workdir,
                duration=args.duration,
                sign=args.sign,
                dispatch=args.dispatch,
                out=RESULTS / f"intake-{stamp}.pyspy.txt",
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    a = [m for m in measurements if m.server == "a"]
    b = [m for m in measurements if m.server == "b"]
    summary = {
        letter: {
            "server": SERVERS[letter],
            "rps_median": median([m.rps for m in ms]),
            "p50_ms_median": median([m.p50_ms for m in ms]),
            "p99_ms_median": median([m.p99_ms for m in ms]),
            "rps_min": min(m.rps for m in ms),
            "rps_max": max(m.rps for m in ms),
        }
        for letter, ms in (("a", a), ("b", b))
    }
    ratio = summary["b"]["rps_median"] / summary["a"]["rps_median"]
    round_ratios = [mb.rps / ma.rps for ma, mb in zip(a, b, strict=True)]
    p99_b = summary["b"]["p99_ms_median"]
    valid = all(m.valid for m in measurements)
    ratio_ok, p99_ok = ratio >= TARGET_RATIO, p99_b <= TARGET_P99_MS

    print(f"\nmedians over {args.rounds} rounds")
    print(f"  {'server':<10} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'req/s range':>17}")
    for letter in ("a", "b"):
        s = summary[letter]
        print(
            f"  {letter} {s['server']:<8} {s['rps_median']:>13,.0f} {s['p50_ms_median']:>8.2f} "
            f"{s['p99_ms_median']:>8.2f} {s['rps_min']:>8,.0f}-{s['rps_max']:,.0f}"
        )
    print(
        f"  ratio b/a of medians: {ratio:.3f}   per round: "
        + " ".join(f"{r:.3f}" for r in round_ratios)
    )
    stored = [(m.stored, m.ok) for m in b]
    print("  (b) rows stored vs 200s per round: " + ", ".join(f"{s:,}/{o:,}" for s, o in stored))
    print(
        f"target (ratio >= {TARGET_RATIO} and p99(b) <= {TARGET_P99_MS:g} ms at "
        f"{args.connections} connections): ratio {'met' if ratio_ok else 'NOT met'} "
        f"({ratio:.2f}), p99 {'met' if p99_ok else 'NOT met'} ({p99_b:.2f} ms)"
        f" -> {'MET' if ratio_ok and p99_ok else 'NOT MET'}"
    )
    if not valid:
        print("INVALID RUN: some measurements had errors (see INVALID above)")

    if profile is not None:
        print_profile(profile)

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"intake-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "settings": {**vars(args), "body_bytes": body_bytes},
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "wrk": subprocess.run(
                        [wrk, "--version"], capture_output=True, text=True
                    ).stdout.splitlines()[:1],
                },
                "measurements": [asdict(m) | {"valid": m.valid} for m in measurements],
                "summary": summary,
                "ratio_of_medians": ratio,
                "round_ratios": round_ratios,
                "target": {
                    "ratio": TARGET_RATIO,
                    "p99_ms": TARGET_P99_MS,
                    "ratio_met": ratio_ok,
                    "p99_met": p99_ok,
                    "met": ratio_ok and p99_ok,
                },
                "valid": valid,
                "profile": profile,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"results: {out.relative_to(ROOT)}")
    return 0 if valid else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)

#!/usr/bin/env python3
"""submitCall with an uploaded recordingKey: requests/s on Postgres.

Run on demand, never in CI:

    python3 scripts/bench_submit.py [--seconds 5] [--rounds 3] [--conns 16,64] [--binary PATH]
                                    [--rate 4000]

What it does:
1. creates a fresh database (`vg_bench_submit_<random>`, dropped at the end) on
   VOICEGRAPH_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432) and starts
   voicegraph on it as production runs it: `voicegraph serve` and `voicegraph relay` as two
   processes (no worker, so that analysis does not compete with the submissions measured),
   connected as a runtime role under row-level security, the embedded file blob store, rate
   limits and connection caps lifted so that the load generator is not refused;
2. before each wrk run, uploads enough recordings for it (`--rate` per second of the run: a
   2-second stereo 8 kHz WAV, 64 KB, through `createRecordingUpload`, 25 to a request, and its
   signed URL);
3. runs wrk, each request a `submitCall(input: {recordingKey, externalId})` with a key of its
   own (the upload is copied where no URL can write, checked as audio and hashed; the call
   row, its analysis, its SUBMITTED event, its job's outbox row and the upload's deletion are
   written in one transaction), counting every answer that is not a call as an error;
4. checks afterwards that every submission made exactly one QUEUED call with one event and one
   outbox row (delivered to the job queue by the relay), and counts the SQL statements per
   submission (voicegraph_db_statements_total).

Needs: Postgres, wrk (`apt-get install wrk`), cargo (or --binary).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_postgraphile import (  # noqa: E402
    RUNTIME_ROLE, ROOT, gql, log, metric, pg_url, psql, recording, server_env, to_ms, wait_http,
)

KEY = "vg_bench_" + uuid.uuid4().hex
PORT = 18482

SUBMIT = ("mutation($k: String!, $e: String) { submitCall(input: {recordingKey: $k, "
          "externalId: $e}) { call { id status } } }")
UPLOADS = 25  # createRecordingUpload per request (aliases; VOICEGRAPH_MAX_ROOT_FIELDS is 30)


def create_uploads(url, n, size):
    """n upload keys with their signed URLs, UPLOADS per GraphQL request."""
    def batch(count):
        fields = " ".join(
            f'u{i}: createRecordingUpload(input: {{contentType: "audio/wav", byteSize: {size}}}) '
            "{ recordingKey uploadUrl headers { name value } }" for i in range(count))
        data = gql(url, f"mutation {{ {fields} }}", key=KEY)
        return list(data.values())
    sizes = [UPLOADS] * (n // UPLOADS) + ([n % UPLOADS] if n % UPLOADS else [])
    with ThreadPoolExecutor(4) as pool:
        return [u for part in pool.map(batch, sizes) for u in part]


def put_uploads(uploads, audio, workers=16):
    """Sends each recording to its signed URL, over one kept-alive connection per thread."""
    def run(chunk):
        conn = None
        for u in chunk:
            parts = urlsplit(u["uploadUrl"])
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            path = parts.path + ("?" + parts.query if parts.query else "")
            headers = {h["name"]: h["value"] for h in u["headers"]}
            conn.request("PUT", path, body=audio, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status not in (200, 201, 204):
                raise RuntimeError(f"upload refused: {r.status}")
        if conn:
            conn.close()
    chunks = [uploads[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, chunks))


def lua(path, keys_file, threads):
    with open(path, "w") as f:
        f.write(f"""
local threads = {{}}
local seq = 0
function setup(thread)
  thread:set("id", seq)
  seq = seq + 1
  table.insert(threads, thread)
end
function init(args)
  keys = {{}}
  n = 0
  errors = 0
  exhausted = 0
  local i = 0
  for line in io.lines("{keys_file}") do
    if i % {threads} == id then table.insert(keys, line) end
    i = i + 1
  end
end
function request()
  n = n + 1
  local k = keys[n]
  if k == nil then
    exhausted = exhausted + 1
    k = keys[1]
  end
  local body = '{{"query":{json.dumps(SUBMIT)},"variables":{{"k":"' .. k .. '","e":"bench-' .. id .. '-' .. n .. '"}}}}'
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {KEY}"}}, body)
end
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) or not string.find(body, '"QUEUED"', 1, true) then
    errors = errors + 1
    if errors == 1 then io.stderr:write("first error: " .. status .. " " .. body .. "\\n") end
  end
end
function done(summary, latency, requests)
  local e, x = 0, 0
  for _, t in ipairs(threads) do
    e = e + t:get("errors")
    x = x + t:get("exhausted")
  end
  io.write(string.format("ANSWERS-NOT-CALLS %d\\nKEYS-EXHAUSTED %d\\n", e, x))
end
""")


def run(url, script, conns, seconds):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True,
    )
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", text).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", text).group(1))
    errors = int(re.search(r"ANSWERS-NOT-CALLS (\d+)", text).group(1))
    exhausted = int(re.search(r"KEYS-EXHAUSTED (\d+)", text).group(1))
    if errors:
        log(out.stderr.strip())
    return rps, p50, p99, total, errors, exhausted


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="16,64")
    ap.add_argument("--rate", type=int, default=4000,
                    help="uploads prepared per second of each run (more than it can submit)")
    ap.add_argument("--binary", help="a release voicegraph binary (default: cargo build --release)")
    args = ap.parse_args()
    for tool in ("wrk", "psql"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (wrk: apt-get install wrk)")
    binary = args.binary
    if not binary:
        log("building voicegraph (release)…")
        subprocess.run(["cargo", "build", "--release", "--bin", "voicegraph"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "voicegraph")

    db = "vg_bench_submit_" + uuid.uuid4().hex[:8]
    psql(f"CREATE DATABASE {db}")
    psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') "
         f"THEN CREATE ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; END IF; END $$")
    work = tempfile.mkdtemp(prefix="vg-bench-submit-")
    procs = []
    try:
        env = server_env(db, os.path.join(work, "data"), PORT, KEY)
        # The relay migrates nothing and waits for serve's migrations.
        serve_log = open(os.path.join(work, "serve.log"), "w")
        serve = subprocess.Popen([binary, "serve"], env=env, stdout=serve_log,
                                 stderr=subprocess.STDOUT)
        procs.append(serve)
        url = f"http://127.0.0.1:{PORT}/graphql"
        wait_http(f"http://127.0.0.1:{PORT}/healthz", "voicegraph serve", serve)
        relay_env = dict(env, VOICEGRAPH_LISTEN="127.0.0.1:0")
        relay_log = open(os.path.join(work, "relay.log"), "w")
        procs.append(subprocess.Popen([binary, "relay"], env=relay_env, stdout=relay_log,
                                      stderr=subprocess.STDOUT))

        audio = recording()
        results = {}
        submitted = 0
        statements = 0.0
        for conns in [int(c) for c in args.conns.split(",")]:
            rounds = []
            for r in range(args.rounds):
                n = args.rate * args.seconds
                started = time.time()
                uploads = create_uploads(url, n, len(audio))
                put_uploads(uploads, audio)
                keys_file = os.path.join(work, f"keys-{conns}-{r}.txt")
                with open(keys_file, "w") as f:
                    f.write("\n".join(u["recordingKey"] for u in uploads) + "\n")
                script = os.path.join(work, f"submit-{conns}-{r}.lua")
                lua(script, keys_file, 2)
                log(f"{n} uploads ready in {time.time() - started:.1f}s")
                s0 = metric(url, "voicegraph_db_statements_total")
                rps, p50, p99, total, errors, exhausted = run(url, script, conns, args.seconds)
                statements += metric(url, "voicegraph_db_statements_total") - s0
                if exhausted:
                    sys.exit(f"the run used more than the {n} uploads prepared: raise --rate")
                if errors:
                    sys.exit(f"{errors} of {total} submissions were not answered with a call")
                submitted += total
                rounds.append((rps, p50, p99))
                log(f"× {conns}: round {r + 1}: {rps:,.0f}/s (p50 {p50:.1f} ms, p99 {p99:.1f} ms)")
            results[conns] = tuple(statistics.median(x[i] for x in rounds) for i in range(3))

        # Every submission made one QUEUED call, with its event and its delivered job.
        deadline = time.time() + 120
        while True:
            # The uploads' deletions wait until their signed URLs have expired.
            left = psql_value(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL "
                                  "AND destination <> 'blob_delete'")
            if left == "0" or time.time() > deadline:
                break
            time.sleep(0.5)
        calls = psql_value(db, "SELECT count(*) FROM calls WHERE status = 'QUEUED'")
        events = psql_value(db, "SELECT count(*) FROM call_events WHERE kind = 'SUBMITTED'")
        jobs = psql_value(db, "SELECT count(*) FROM jobs WHERE queue = 'jobs'")
        print(f"\nsubmitCall with recordingKey, a 64 KB WAV, wrk -t2 for {args.seconds}s over "
              f"{args.rounds} rounds (medians); voicegraph serve + relay on Postgres\n")
        print("| conns | submissions/s | p50 / p99 ms |")
        print("|---|---|---|")
        for conns, (rps, p50, p99) in results.items():
            print(f"| {conns} | {rps:,.0f} | {p50:.1f} / {p99:.1f} |")
        print(f"\n{submitted} submissions answered: {calls} QUEUED calls, {events} SUBMITTED events, "
              f"{jobs} jobs delivered to the queue, outbox left {left}; "
              f"{statements / submitted:.2f} SQL statements per submission (serve)")
        # wrk counts the answers it read; the requests in flight when it stopped went through too.
        if not (int(calls) == int(events) == int(jobs) >= submitted and left == "0"):
            sys.exit("the submissions and what the database holds do not match")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        except subprocess.CalledProcessError as e:
            log(f"dropping {db}: {e}")
        log(f"logs kept in {work}")


def psql_value(db, sql):
    return subprocess.run(["psql", pg_url(db), "-Atc", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    main()

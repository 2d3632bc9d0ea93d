#!/usr/bin/env python3
"""voicegraph and PostGraphile 4 side by side, on the same Postgres and the same calls.

Run on demand, never in CI:

    python3 scripts/bench_postgraphile.py [--calls 2000] [--seconds 10] [--rounds 3]
                                          [--conns 10,50] [--queries a,b,c] [--binary PATH]
                                          [--db NAME] [--no-response-cache]

What it does:
1. creates a fresh database (`vg_bench_<random>`, dropped at the end; `--db NAME` keeps it and
   reuses it on the next run with the same name, skipping the seeding) on VOICEGRAPH_TEST_POSTGRES_URL (default
   postgres://postgres@127.0.0.1:5432), starts voicegraph on it (every role in one process,
   release build, rate limits and connection caps lifted so that the load generator is not
   refused), and seeds it through voicegraph's own API: `--calls` multipart `submitCall`s of a
   2-second stereo recording with a transcript, analysed by the local analyser until every call
   is COMPLETED and every event sequenced;
2. starts PostGraphile 4 from npm (`scripts/postgraphile`, pinned by its lockfile) on the same
   database, with a smart-tags file declaring the `call_events -> calls` relation;
3. checks that both answer queries (a), (b) and (c) with the same data;
   voicegraph connects as a runtime role under row-level security, PostGraphile as the
   owner with no security at all; neither over TLS; the database is vacuumed and analysed after
   seeding, and gets the index on `calls (created_at, id)` that PostGraphile's ordering needs;
4. counts what one request of each query costs in SQL: the statements voicegraph issued (its
   `voicegraph_db_statements_total` metric) and the transactions Postgres committed for its database
   (`pg_stat_database`), over 200 requests one after another;
5. runs wrk on each query at each connection count, A B A B over `--rounds` rounds, and prints
   requests/s and p50/p99 per server (the median of the rounds) and the ratio.

voicegraph runs with its response cache as deployed (a repeated query is answered from memory
while Postgres reports the snapshot it was computed in, one statement per request, see
src/graphql/response_cache.rs); `--no-response-cache` turns it off, so that every request
executes against the database.

The queries (voicegraph with its API key, PostGraphile with no auth at all):
  (a) one call by id, 5 scalars;
  (b) a page of 20 calls, the same scalars;
  (c) a page of 100 calls with their segments and events.

Needs: Postgres, Node.js and npm, wrk (`apt-get install wrk`), cargo (or --binary).
"""

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_DIR = os.path.join(ROOT, "scripts", "postgraphile")
KEY = "vg_bench_" + uuid.uuid4().hex  # fixed per database with --db
VG_PORT = 18480
PG_PORT = 18481

FIELDS = "id status durationMs summary createdAt"
QUERIES = {
    "a": (
        "query($id: ID!) { call(id: $id) { %s } }" % FIELDS,
        "query($id: UUID!) { callById(id: $id) { %s } }" % FIELDS,
    ),
    "b": (
        "{ calls(first: 20) { nodes { %s } } }" % FIELDS,
        "{ allCalls(first: 20, orderBy: [CREATED_AT_DESC, ID_DESC]) { nodes { %s } } }" % FIELDS,
    ),
    "c": (
        "{ calls(first: 100) { nodes { id status transcript { segments { speaker startMs endMs text } } "
        "events { kind status } } } }",
        "{ allCalls(first: 100, orderBy: [CREATED_AT_DESC, ID_DESC]) { nodes { id status "
        "callSegmentsByCallId(orderBy: IDX_ASC) { nodes { speaker startMs endMs text } } "
        "callEventsByCallId(orderBy: ID_ASC) { nodes { kind status } } } } }",
    ),
}
TITLES = {
    "a": "(a) one call by id, 5 scalars",
    "b": "(b) a page of 20 calls, scalars",
    "c": "(c) a page of 100 calls with segments and events",
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def pg_url(db=None, user=None):
    """Both servers connect without TLS, as they would to a database on the same host."""
    base = os.environ.get("VOICEGRAPH_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
    base = base.rstrip("/")
    if user:
        scheme, rest = base.split("://", 1)
        base = f"{scheme}://{user}@{rest.rsplit('@', 1)[-1]}"
    return f"{base}/{db or 'postgres'}?sslmode=disable"


# voicegraph runs as a runtime role bound by row-level security, as in production (the
# migrations run as the owner, here the superuser that also serves PostGraphile).
RUNTIME_ROLE = "vg_bench_app"


def psql(sql, db=None):
    subprocess.run(["psql", pg_url(db), "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def recording():
    """A 2-second stereo 8 kHz WAV: the agent 0.2-1.2 s, the customer 1.0-1.8 s."""
    rate, out = 8000, io.BytesIO()
    rng = random.Random(7)
    frames = bytearray()
    for i in range(2 * rate):
        t = i / rate
        for lo, hi in ((0.2, 1.2), (1.0, 1.8)):
            amp = 9000 if lo <= t < hi else 15
            frames += struct.pack("<h", int((rng.random() * 2 - 1) * amp))
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


def post(url, body, headers, timeout=30):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def gql(url, query, variables=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    answer = post(url, body, headers)
    if answer.get("errors"):
        raise RuntimeError(f"{query}: {answer['errors']}")
    return answer["data"]


def submit(url, audio, n):
    boundary = "vgbench" + uuid.uuid4().hex
    operations = json.dumps({
        "query": "mutation($f: Upload!, $t: String) { submitCall(input: {recording: $f, "
                 "externalId: $t, transcript: {text: \"agent: Thanks for calling, I will send "
                 "the invoice today.\\ncustomer: The invoice is wrong.\"}}) { call { id } } }",
        "variables": {"f": None, "t": f"bench-{n}"},
    })
    parts = [
        ("operations", None, operations.encode()),
        ("map", None, json.dumps({"0": ["variables.f"]}).encode()),
        ("0", "call.wav", audio),
    ]
    body = io.BytesIO()
    for name, filename, data in parts:
        body.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        body.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename:
            body.write(b"Content-Type: audio/wav\r\n")
        body.write(b"\r\n" + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Authorization": f"Bearer {KEY}",
        "apollo-require-preflight": "true",
    }
    for attempt in range(5):
        try:
            answer = post(url, body.getvalue(), headers, timeout=60)
            if answer.get("errors"):
                raise RuntimeError(answer["errors"])
            return answer["data"]["submitCall"]["call"]["id"]
        except (urllib.error.URLError, RuntimeError) as e:
            if attempt == 4:
                raise
            log(f"submission {n} failed ({e}); again")
            time.sleep(0.5)


def server_env(db, data_dir, port, key):
    """voicegraph's environment for a bench: on `db` as the runtime role under RLS (migrating as
    the owner), listening on `port` with `key` as its admin key, rate limits and caps lifted so
    that the load generator is not refused."""
    env = dict(os.environ)
    env.update({
        "VOICEGRAPH_MIGRATE_DATABASE_URL": pg_url(db),
        "VOICEGRAPH_DATABASE_RUNTIME_ROLE": RUNTIME_ROLE,
        "VOICEGRAPH_DATABASE_URL": pg_url(db, RUNTIME_ROLE),
        "VOICEGRAPH_DATA_DIR": data_dir,
        "VOICEGRAPH_LISTEN": f"127.0.0.1:{port}",
        "VOICEGRAPH_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGRAPH_BOOTSTRAP_ADMIN_KEY": key,
        "VOICEGRAPH_RATE_LIMIT_RPS": "0",
        "VOICEGRAPH_TENANT_RATE_LIMIT_RPS": "0",
        "VOICEGRAPH_ADDRESS_RATE_LIMIT_RPS": "0",
        "VOICEGRAPH_MAX_CONNECTIONS_PER_IP": "0",
        "VOICEGRAPH_COST_BUDGET_PER_MINUTE": "1000000000000",
        "VOICEGRAPH_TENANT_COST_BUDGET_PER_MINUTE": "1000000000000",
        "RUST_LOG": "warn",
    })
    return env


def wait_http(url, what, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up at {url}")


def wrk_script(path, query, variables, key):
    body = json.dumps({"query": query, "variables": variables})
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = [==[{body}]==]\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        if key:
            f.write(f'wrk.headers["Authorization"] = "Bearer {key}"\n')


def to_ms(value):
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    n, unit = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000}[unit]


def run_wrk(url, script, conns, seconds):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        log(f"wrk on {url}: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}")
    return rps, p50, p99


def numbers(value):
    """PostGraphile answers BigInt columns as strings; voicegraph as numbers."""
    if isinstance(value, list):
        return [numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: (int(v) if k in ("durationMs", "startMs", "endMs") and isinstance(v, str)
                    else numbers(v)) for k, v in value.items()}
    return value


def normalise(which, side, data):
    """What a query's answer says, in one shape for both servers."""
    return numbers(_normalise(which, side, data))


def _normalise(which, side, data):
    if which == "a":
        return data["call" if side == 0 else "callById"]
    if which == "b":
        return data["calls" if side == 0 else "allCalls"]["nodes"]
    nodes = data["calls" if side == 0 else "allCalls"]["nodes"]
    out = []
    for n in nodes:
        if side == 0:
            segs = n["transcript"]["segments"] if n["transcript"] else []
            events = n["events"]
        else:
            segs = n["callSegmentsByCallId"]["nodes"]
            events = n["callEventsByCallId"]["nodes"]
        out.append({"id": n["id"], "status": n["status"], "segments": segs, "events": events})
    return out


def same_time(a, b):
    """PostGraphile prints timestamps in the database's time zone; voicegraph in UTC."""
    from datetime import datetime
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


def check_same(which, vg, pg):
    a, b = normalise(which, 0, vg), normalise(which, 1, pg)
    if which in ("a", "b"):
        rows_a, rows_b = (a, b) if which == "b" else ([a], [b])
        assert len(rows_a) == len(rows_b), (which, len(rows_a), len(rows_b))
        for x, y in zip(rows_a, rows_b):
            assert same_time(x.pop("createdAt"), y.pop("createdAt")), (which, x, y)
            assert x == y, (which, x, y)
    else:
        assert a == b, f"(c) differs: {json.dumps(a)[:400]} vs {json.dumps(b)[:400]}"


def metric(vg_url, name):
    text = urllib.request.urlopen(vg_url.replace("/graphql", "/metrics"), timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def transactions(db):
    out = subprocess.run(
        ["psql", pg_url(db), "-Atc",
         f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.strip())


def statements_per_request(vg_url, db, query, variables, n=200):
    """What one request costs in SQL: statements voicegraph issued, transactions Postgres saw
    (the statistics collector is flushed at most once a second, hence the pauses; psql's own
    transactions are subtracted)."""
    gql(vg_url, query, variables, KEY)
    time.sleep(1.2)
    s0, t0 = metric(vg_url, "voicegraph_db_statements_total"), transactions(db)
    for _ in range(n):
        gql(vg_url, query, variables, KEY)
    time.sleep(1.2)
    s1, t1 = metric(vg_url, "voicegraph_db_statements_total"), transactions(db)
    # psql's own SELECT is a transaction; an idle process's background work shows here too.
    return (s1 - s0) / n, (t1 - t0 - 1) / n


def seed(vg_url, calls):
    log(f"seeding {calls} calls through submitCall…")
    audio = recording()
    started = time.time()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda n: submit(vg_url, audio, n), range(calls)))
    log(f"submitted in {time.time() - started:.1f}s; waiting for every analysis")
    while True:
        stats = gql(vg_url, "{ callStats { total byStatus { status count } } }", key=KEY)
        done = {s["status"]: s["count"] for s in stats["callStats"]["byStatus"]}
        if done.get("COMPLETED", 0) == calls:
            break
        time.sleep(1)
    # Every call's three events sequenced (listed by Call.events only once they are).
    while True:
        page = gql(vg_url, "{ calls(first: 100) { nodes { events { kind } } } }", key=KEY)
        if all(len(n["events"]) == 3 for n in page["calls"]["nodes"]):
            break
        time.sleep(0.5)
    log(f"seeded in {time.time() - started:.1f}s")

    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="10,50")
    ap.add_argument("--queries", default="a,b,c", help="which of the queries to run")
    ap.add_argument("--binary", help="a release voicegraph binary (default: cargo build --release)")
    ap.add_argument("--db", help="keep the seeded database under this name and reuse it next time")
    ap.add_argument("--no-response-cache", action="store_true",
                    help="run voicegraph without its response cache (VOICEGRAPH_RESPONSE_CACHE_MB=0): "
                         "every request executed against the database")
    args = ap.parse_args()
    global KEY
    if args.db:
        if not re.fullmatch(r"vg_bench_[a-z0-9_]+", args.db):
            sys.exit("--db must look like vg_bench_<letters, digits, _>")
        KEY = "vg_bench_" + uuid.uuid5(uuid.NAMESPACE_URL, args.db).hex
    for tool in ("wrk", "psql", "npm", "node"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (wrk: apt-get install wrk)")

    binary = args.binary
    if not binary:
        log("building voicegraph (release)…")
        subprocess.run(["cargo", "build", "--release", "--bin", "voicegraph"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "voicegraph")
    if not os.path.exists(os.path.join(PG_DIR, "node_modules", ".bin", "postgraphile")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PG_DIR, check=True)

    db = args.db or "vg_bench_" + uuid.uuid4().hex[:10]
    seeded = False
    if args.db:
        seeded = subprocess.run(
            ["psql", pg_url(db), "-Atc", "SELECT count(*) FROM calls WHERE status = 'COMPLETED'"],
            capture_output=True, text=True,
        ).stdout.strip() == str(args.calls)
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)") if not seeded else None
    if not seeded:
        psql(f"CREATE DATABASE {db}")
    psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') "
         f"THEN CREATE ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; END IF; END $$")
    work = tempfile.mkdtemp(prefix="vg-bench-")
    procs = []
    try:
        env = server_env(db, os.path.join(work, "data"), VG_PORT, KEY)
        if args.no_response_cache:
            env["VOICEGRAPH_RESPONSE_CACHE_MB"] = "0"
        vg_log = open(os.path.join(work, "voicegraph.log"), "w")
        vg = subprocess.Popen([binary], env=env, stdout=vg_log, stderr=subprocess.STDOUT)
        procs.append(vg)
        vg_url = f"http://127.0.0.1:{VG_PORT}/graphql"
        wait_http(f"http://127.0.0.1:{VG_PORT}/healthz", "voicegraph", vg)

        if seeded:
            log(f"reusing {db}, seeded with {args.calls} calls")
            ids = [n["id"] for n in
                   gql(vg_url, "{ calls(first: 100) { nodes { id } } }", key=KEY)["calls"]["nodes"]]
        else:
            ids = seed(vg_url, args.calls)
        # A settled database, as autovacuum leaves it, and the one index PostGraphile's ordering
        # needs (voicegraph's own leads with the tenant).
        psql("VACUUM ANALYZE", db)
        psql("CREATE INDEX IF NOT EXISTS bench_calls_created ON calls (created_at, id)", db)

        pg_log = open(os.path.join(work, "postgraphile.log"), "w")
        pgr = subprocess.Popen(
            [os.path.join(PG_DIR, "node_modules", ".bin", "postgraphile"),
             "-c", pg_url(db), "--schema", "public", "--port", str(PG_PORT), "--host", "127.0.0.1",
             "--disable-default-mutations", "--disable-query-log"],
            cwd=PG_DIR, stdout=pg_log, stderr=subprocess.STDOUT,
        )
        procs.append(pgr)
        pg_graphql = f"http://127.0.0.1:{PG_PORT}/graphql"
        deadline = time.time() + 60
        while True:
            try:
                gql(pg_graphql, "{ __typename }")
                break
            except Exception:
                if pgr.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PostGraphile did not come up; see {pg_log.name}")
                time.sleep(0.3)

        one = ids[len(ids) // 2]
        variables = {"a": {"id": one}, "b": {}, "c": {}}
        for which, (q_vg, q_pg) in QUERIES.items():
            check_same(which, gql(vg_url, q_vg, variables[which], KEY),
                       gql(pg_graphql, q_pg, variables[which]))
        log("both servers answer (a), (b) and (c) with the same data")

        chosen = {w: q for w, q in QUERIES.items() if w in args.queries.split(",")}
        costs = {w: statements_per_request(vg_url, db, q[0], variables[w]) for w, q in chosen.items()}

        results = {}
        for which, (q_vg, q_pg) in chosen.items():
            scripts = []
            for side, (q, key) in enumerate(((q_vg, KEY), (q_pg, None))):
                path = os.path.join(work, f"{which}{side}.lua")
                wrk_script(path, q, variables[which], key)
                scripts.append(path)
            for conns in [int(c) for c in args.conns.split(",")]:
                rounds = {0: [], 1: []}
                for r in range(args.rounds):
                    for side, url in ((0, vg_url), (1, pg_graphql)):
                        rounds[side].append(run_wrk(url, scripts[side], conns, args.seconds))
                    log(f"{which} × {conns}: round {r + 1}: voicegraph {rounds[0][-1][0]:.0f}/s, "
                        f"PostGraphile {rounds[1][-1][0]:.0f}/s")
                results[(which, conns)] = {
                    side: tuple(statistics.median(x[i] for x in rounds[side]) for i in range(3))
                    for side in (0, 1)
                }

        cache = "off" if args.no_response_cache else "on"
        print(f"\n{args.calls} calls, wrk -t2 for {args.seconds}s, A B A B over {args.rounds} rounds "
              f"(medians); voicegraph with its API key and its response cache {cache}, "
              "PostGraphile with no auth\n")
        print("| query | conns | voicegraph req/s | p50 / p99 ms | PostGraphile req/s | p50 / p99 ms | ratio |")
        print("|---|---|---|---|---|---|---|")
        for (which, conns), r in results.items():
            (v, v50, v99), (p, p50, p99) = r[0], r[1]
            print(f"| {TITLES[which]} | {conns} | {v:,.0f} | {v50:.2f} / {v99:.2f} | {p:,.0f} | "
                  f"{p50:.2f} / {p99:.2f} | {v / p:.2f}× |")
        hits = metric(vg_url, 'voicegraph_graphql_response_cache_total{outcome="hit"}')
        print(f"\nvoicegraph answered {hits:,.0f} requests from its response cache.")
        print("\nSQL per request, over 200 requests one after another:\n")
        print("| query | statements (voicegraph's db_statements_total) | transactions (pg_stat_database) |")
        print("|---|---|---|")
        for which, (statements, transactions) in costs.items():
            print(f"| {TITLES[which]} | {statements:.2f} | {transactions:.2f} |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            if not args.db:
                psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        except subprocess.CalledProcessError as e:
            log(f"dropping {db}: {e}")
        log(f"logs kept in {work}")


if __name__ == "__main__":
    main()

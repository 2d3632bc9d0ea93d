#!/usr/bin/env node
// Webhook delivery latency: from an event's commit (its `createdAt`) to the moment a local
// endpoint receives the signed delivery, for every event of N calls submitted C at a time.
// Run on demand, never in CI:
//
//   cargo build --release && node scripts/bench-webhooks.mjs [--calls 200] [--concurrency 4]
//
// VOICEGRAPH_BIN picks the binary (default target/release/voicegraph). The server runs as
// `voicegraph dev` (embedded backends) unless VOICEGRAPH_DATABASE_URL and friends are set in
// the environment, which it inherits. Every delivery's signature is checked (node:crypto).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const CALLS = arg('calls', 200);
const CONCURRENCY = arg('concurrency', 4);
const BIN = process.env.VOICEGRAPH_BIN ?? path.join(ROOT, 'target/release/voicegraph');
const KEY = 'vg_bench_webhooks_admin_key';
const RECORDING = readFileSync(path.join(ROOT, 'playground/samples/call.wav'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function gql(url, token, query, variables = {}) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await r.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

async function submit(url, token, i) {
  const form = new FormData();
  form.set(
    'operations',
    JSON.stringify({
      query: 'mutation($r: Upload!, $t: String!) { submitCall(input: {recording: $r, transcript: {text: $t}}) { call { id } } }',
      variables: { r: null, t: `Call ${i}: hello, I would like to change my delivery address, thank you.` },
    }),
  );
  form.set('map', JSON.stringify({ 0: ['variables.r'] }));
  form.set('0', new Blob([RECORDING], { type: 'audio/wav' }), 'call.wav');
  const r = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'apollo-require-preflight': 'true' },
    body: form,
  });
  const body = await r.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
}

function verify(secret, headers, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const mac = crypto
    .createHmac('sha256', key)
    .update(`${headers['webhook-id']}.${headers['webhook-timestamp']}.${body}`)
    .digest('base64');
  return headers['webhook-signature'].split(' ').includes(`v1,${mac}`);
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

async function main() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vg-bench-hooks-'));
  const child = spawn(BIN, ['dev'], {
    env: {
      ...process.env,
      VOICEGRAPH_LISTEN: `127.0.0.1:${port}`,
      VOICEGRAPH_DATA_DIR: dir,
      VOICEGRAPH_BOOTSTRAP_ADMIN_KEY: KEY,
      RUST_LOG: process.env.RUST_LOG ?? 'warn',
    },
    stdio: ['ignore', process.env.RUST_LOG ? 'inherit' : 'ignore', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  const url = `${base}/graphql`;
  try {
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${base}/healthz`)).ok) break;
      } catch {
        // not up yet
      }
      if (i > 600) throw new Error('voicegraph did not start');
      await sleep(50);
    }
    let secret = '';
    const latencies = [];
    let bad = 0;
    let completed = 0;
    const hook = http.createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const now = Date.now();
        const body = Buffer.concat(chunks).toString('utf8');
        res.writeHead(204).end();
        if (!verify(secret, req.headers, body)) {
          bad += 1;
          return;
        }
        const m = JSON.parse(body);
        latencies.push(now - Date.parse(m.data.event.createdAt));
        if (m.type === 'call.completed') completed += 1;
      });
    });
    await new Promise((r) => hook.listen(0, '127.0.0.1', r));
    const tenant = (await gql(url, KEY, 'mutation { createTenant(input: {name: "bench"}) { tenant { id } } }'))
      .createTenant.tenant.id;
    const admin = (
      await gql(url, KEY, 'mutation($t: ID!) { createApiKey(input: {tenantId: $t, role: ADMIN, name: "a"}) { secret } }', {
        t: tenant,
      })
    ).createApiKey.secret;
    secret = (
      await gql(url, admin, 'mutation($u: String!) { createWebhook(input: {url: $u}) { secret } }', {
        u: `http://127.0.0.1:${hook.address().port}/`,
      })
    ).createWebhook.secret;

    const started = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < CALLS) await submit(url, admin, next++);
      }),
    );
    while (completed < CALLS) {
      if (Date.now() - started > 600_000) throw new Error(`only ${completed} of ${CALLS} calls completed`);
      await sleep(50);
    }
    await sleep(500); // any straggling deliveries of the last calls
    hook.close();
    const sorted = [...latencies].sort((a, b) => a - b);
    const secs = (Date.now() - started) / 1000;
    console.log(`calls ${CALLS}, concurrency ${CONCURRENCY}, deliveries ${sorted.length} in ${secs.toFixed(1)} s, bad signatures ${bad}`);
    console.log(
      `event commit -> endpoint, ms: p50 ${quantile(sorted, 0.5)}  p90 ${quantile(sorted, 0.9)}  p99 ${quantile(sorted, 0.99)}  max ${sorted.at(-1)}`,
    );
    if (bad > 0) process.exitCode = 1;
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// The voicegraph processes the node tests run: each test starts the real binary
// (VOICEGRAPH_BIN, built by `cargo test`) on its own port and data directory, every role on
// embedded backends, and talks to it as a client would.

import { after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const BIN = process.env.VOICEGRAPH_BIN;
export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
export const KEY = 'vg_node_client_tests_admin_key';
export const JWT_SECRET = 'node-client-tests-hs256-secret-of-32-bytes-or-more';
export const APP_ORIGIN = 'https://app.example.com';
export const PING_MS = 300;
export const RECORDING = readFileSync(path.join(ROOT, 'playground/samples/call.wav'));

const servers = [];

/** Stops every server the tests started. */
export function stopServers() {
  for (const s of servers.splice(0)) s.stop();
}
after(stopServers);

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts voicegraph (every role, embedded backends) and waits until it answers. */
export async function startServer(extraEnv = {}) {
  assert.ok(BIN, 'VOICEGRAPH_BIN must name the voicegraph binary');
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vg-node-'));
  const child = spawn(BIN, ['dev'], {
    env: {
      PATH: process.env.PATH,
      VOICEGRAPH_LISTEN: `127.0.0.1:${port}`,
      VOICEGRAPH_DATA_DIR: dir,
      VOICEGRAPH_BOOTSTRAP_ADMIN_KEY: KEY,
      VOICEGRAPH_WS_PING_INTERVAL_MS: String(PING_MS),
      VOICEGRAPH_WS_PONG_TIMEOUT_MS: '2000',
      VOICEGRAPH_JWT_HS256_SECRET: JWT_SECRET,
      VOICEGRAPH_CORS_ORIGINS: APP_ORIGIN,
      VOICEGRAPH_RELAY_POLL_MS: '50',
      RUST_LOG: 'warn',
      ...extraEnv,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  const server = {
    url,
    graphql: `${url}/graphql`,
    ws: `ws://127.0.0.1:${port}/graphql`,
    port,
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  servers.push(server);
  for (let i = 0; i < 600; i++) {
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) return server;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error(`voicegraph exited with ${child.exitCode}`);
    await sleep(50);
  }
  throw new Error('voicegraph did not start');
}

/** Waits until the server counts a live subscription (its `/metrics`, open in development). */
export async function subscribed(server) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const live = Number(/^voicegraph_subscriptions (\d+)/m.exec(metrics)?.[1] ?? 0);
    if (live > 0) return;
    assert.ok(Date.now() < deadline, 'no subscription became live');
    await sleep(50);
  }
}

export async function request(server, query, variables = {}, token = KEY) {
  const r = await fetch(server.graphql, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await r.json();
  assert.equal(body.errors, undefined, JSON.stringify(body));
  return body.data;
}

/**
 * Submits the sample recording as a multipart upload, with the transcript `transcript` when
 * given; returns the call id.
 */
export async function submit(server, token = KEY, transcript = null) {
  const form = new FormData();
  form.set(
    'operations',
    JSON.stringify({
      query: transcript
        ? 'mutation($r: Upload!, $t: String!) { submitCall(input: {recording: $r, transcript: {text: $t}}) { call { id } } }'
        : 'mutation($r: Upload!) { submitCall(input: {recording: $r}) { call { id } } }',
      variables: transcript ? { r: null, t: transcript } : { r: null },
    }),
  );
  form.set('map', JSON.stringify({ 0: ['variables.r'] }));
  form.set('0', new Blob([RECORDING], { type: 'audio/wav' }), 'call.wav');
  const r = await fetch(server.graphql, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'apollo-require-preflight': 'true' },
    body: form,
  });
  const body = await r.json();
  assert.equal(body.errors, undefined, JSON.stringify(body));
  return body.data.submitCall.call.id;
}
